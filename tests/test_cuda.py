"""CUDA only (skipped without a GPU): the CUDA-graphed training step and evaluation compute
exactly what the eager ones compute."""
import pytest
import torch

from engine import GraphedForward, GraphedTrainStep, TrainStep, evaluate
from models import MODEL_NAMES, build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def model_and_optimizer(name, capturable):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=4, T=10, c_mid=8, readout_width=16, depth=3,
                        width=2).cuda()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, capturable=capturable)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_graphed_and_eager_training_agree_over_three_steps(name):
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 3, 16, 16, generator=generator).cuda(),
                torch.randint(0, 4, (4, 16, 16), generator=generator).cuda()) for _ in range(3)]
    results = []
    for graphed in (False, True):
        model, optimizer = model_and_optimizer(name, capturable=graphed)
        step = GraphedTrainStep(model, optimizer, False, *batches[0]) if graphed else TrainStep(model, optimizer, False)
        losses = [step(x, y)[1].item() for x, y in batches]
        grads = [p.grad.detach().clone() for p in model.parameters()]
        results.append((losses, grads, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_grads, eager_params), (graph_losses, graph_grads, graph_params) = results
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_grads + eager_params, graph_grads + graph_params):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["nwm", "unet"])
def test_graphed_evaluation_gives_the_eager_metrics(name):
    model, _ = model_and_optimizer(name, capturable=False)
    images, masks = torch.rand(10, 3, 16, 16).cuda(), torch.randint(0, 4, (10, 16, 16)).cuda()
    graphed = GraphedForward(model.eval(), False, images[:4])
    eager = evaluate(model, images, masks, 4, batch_size=4)
    replayed = evaluate(model, images, masks, 4, batch_size=4, graphed=graphed)  # 4 + 4 graphed, 2 eager
    for key in ("acc", "loss", "iou_foreground", "miou"):
        assert replayed[key] == pytest.approx(eager[key], rel=1e-5)
