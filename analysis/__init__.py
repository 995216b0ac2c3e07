"""The analyses behind the paper's tables and figures, one concern per module:

    tables             score table (produce_scores.py) -> statistics over seeds, CSV / LaTeX / Markdown
    squares            "can one hear the area of a square?": confined waves against the grid theory
    receptive_fields   how far the input that moves one pixel's logits lies (NWM vs CNN)
    trained            inside a trained model: hidden sequence, temporal features, predictions
    animation          GIFs and frame strips of a trained model's hidden state
    waves              phase, frequency, direction, speed, directionality of waves in a hidden sequence
    sound              an object's hidden-state spectrum as a WAV file
    wave_report        the waves of trained runs per object: numbers, figures, sounds

The notebooks call these and draw with plotting.py; `python -m analysis --help` runs some
from the command line.
"""
