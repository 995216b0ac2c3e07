"""U-Net, the non-local baseline (docs/methods.md, "Models").

The standard four-level U-Net with base width c (levels c, 2c, 4c, 8c, 16c): blocks of
two (3x3 conv without bias, BatchNorm, ReLU); down = 2x2 max-pool then a block; up =
2x2 stride-2 transposed conv halving the channels, padding to the skip's size,
concatenation with the skip, then a block; a 1x1 output conv. Its receptive field
covers the whole image after four poolings.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def double_conv(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class Up(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
        self.conv = double_conv(c_in, c_out)

    def forward(self, x, skip):
        x = self.up(x)
        # odd sizes: the upsampled map can be one pixel short of the skip
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    recurrent = False

    def __init__(self, in_channels=1, num_classes=11, width=4):
        super().__init__()
        c = [width * 2 ** i for i in range(5)]
        self.inc = double_conv(in_channels, c[0])
        self.downs = nn.ModuleList(double_conv(c[i], c[i + 1]) for i in range(4))
        self.ups = nn.ModuleList(Up(c[i + 1], c[i]) for i in reversed(range(4)))
        self.outc = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
