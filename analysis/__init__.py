"""The analyses behind the paper's tables and figures, one concern per module:

    tables             score table (produce_scores.py) -> statistics over seeds, CSV / LaTeX / Markdown
    squares            "can one hear the area of a square?": confined waves against the grid theory
    receptive_fields   how far the input that moves one pixel's logits lies (NWM vs CNN)
    trained            inside a trained model: hidden sequence, temporal features, predictions
    animation          GIFs and frame strips of a trained model's hidden state

The notebooks call these and draw with plotting.py; `python -m analysis --help` runs some
from the command line.
"""
