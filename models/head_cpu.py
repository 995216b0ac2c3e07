"""The per-pixel MLP head (readouts.PixelMLP) on the CPU under bfloat16 autocast, in fewer
passes over memory.

Its activations (pixels x width) are the largest tensors of a training step. Under plain
autocast every hidden layer is a bfloat16 matrix product and then a separate ReLU pass,
and its backward a separate ReLU-mask pass and a bias-gradient sum over all pixels. Here
oneDNN adds the bias and applies the ReLU inside the matrix product, the backward
multiplies by the ReLU mask inside the next matrix product, and each bias gradient is a
product with a row of ones. The arithmetic is autocast's (bfloat16 operands, float32
accumulation, bfloat16 results); tests/test_speed.py checks the two against each other.
"""
import torch

BF16 = torch.bfloat16


def applies_anywhere():
    """Whether this PyTorch has oneDNN's fused matrix products (its x86 and ARM builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def applies(x):
    """Whether the head's input `x` is on the CPU inside a bfloat16 autocast region, where
    the fused head runs (not under torch.compile, which fuses the plain head itself)."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == BF16 and applies_anywhere()
            and not torch.compiler.is_compiling())


def _linear(x, weight, bias, activation):
    """x @ weight.T + bias, then `activation` ("relu" or "none"), in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")


class _PixelMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *params):
        weights = [w.to(BF16) for w in params[0::2]]
        biases = [b.to(BF16) for b in params[1::2]]
        inputs = [x.to(BF16).contiguous()]  # each layer's input: the features, then the ReLU outputs
        for w, b in zip(weights[:-1], biases[:-1]):
            inputs.append(_linear(inputs[-1], w, b, "relu"))
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(*inputs, *weights)
        return _linear(inputs[-1], weights[-1], biases[-1], "none")

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        inputs, weights = saved[:len(saved) // 2], saved[len(saved) // 2:]
        g = grad.to(BF16).contiguous()  # dL/d(layer output), before the layer's ReLU
        ones = g.new_ones(1, g.shape[0])
        grads = []
        for layer in reversed(range(len(weights))):
            x = inputs[layer]
            grads += [(ones @ g).view(-1).float(), (g.t() @ x).float()]  # bias, weight (reversed below)
            if layer > 0:
                # dL/dx masked by the ReLU that made x (x >= 0: its sign is the mask), inside the product
                g = torch.ops.mkldnn._linear_pointwise.binary(g, torch.sign(x), weights[layer].t().contiguous(),
                                                              None, "mul")
            elif ctx.needs_input_grad[0]:
                g = (g @ weights[0]).to(ctx.x_dtype)
            else:
                g = None
        return (g, *reversed(grads))


def pixel_mlp(x, linears):
    """The MLP of `linears` (nn.Linear layers, ReLU between) on rows x (N x in_features):
    bfloat16 logits N x out_features, as under autocast."""
    params = [p for layer in linears for p in (layer.weight, layer.bias)]
    with torch.autocast("cpu", enabled=False):
        return _PixelMLP.apply(x, *params)
