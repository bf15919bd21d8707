"""FID: the pytorch-fid InceptionV3 (pool3, 2048-d) in plain torch, and the Frechet distance.

`load_fid_inception(path)` accepts either
- the pytorch-fid weights `pt_inception-2015-12-05-6726825d.pth` (a state dict in torchvision's
  Inception3 key layout: Conv2d_1a_3x3.conv.weight, Mixed_5b.branch1x1.conv.weight, ..., fc.*),
  loaded into the network below (the FID variant of the TensorFlow graph: average pools that do
  not count padding, max pool in the last block's pool branch), or
- a TorchScript file whose forward maps (N,3,H,W) RGB in [0,1] to (N,2048) features.
Inputs are resized to 299x299 (bilinear) and scaled to [-1,1], as pytorch-fid does.
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from talkingface.utils.checkpoint import load_checkpoint_file
from talkingface.utils.errors import CheckpointError


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin, max_pool_branch):
        super().__init__()
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool_branch else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to the 2048-d pool3 features, FID variant (pytorch-fid's fid_inception_v3)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)
        self.fc = nn.Linear(2048, 1008)   # only so the official state dict loads strictly; unused

    def forward(self, images_rgb01):
        x = F.interpolate(images_rgb01, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class _ScriptedFeatures(nn.Module):
    """A TorchScript feature extractor behind the same interface (RGB [0,1] in, (N,2048) out)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, images_rgb01):
        out = self.module(images_rgb01)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.reshape(out.shape[0], -1)


def load_fid_inception(path, device):
    try:
        scripted = torch.jit.load(path, map_location="cpu")
        return _ScriptedFeatures(scripted).to(device).eval()
    except (RuntimeError, ValueError):
        pass   # not TorchScript: a plain state dict
    state = load_checkpoint_file(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    net = FIDInceptionV3()
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the FID InceptionV3 ({str(exc).splitlines()[0]}): "
                              "use pt_inception-2015-12-05-6726825d.pth from pytorch-fid") from None
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    missing = expected - set(state)
    if missing:
        raise CheckpointError(f"{path} is not the FID InceptionV3 state dict ({len(missing)} keys missing, "
                              f"e.g. {sorted(missing)[0]}): use pt_inception-2015-12-05-6726825d.pth")
    return net.to(device).eval()


@torch.no_grad()
def inception_features(net, frames_bgr, device, batch_size=32):
    """(n, 2048) float64 features of uint8 BGR frames."""
    feats = []
    for start in range(0, len(frames_bgr), batch_size):
        batch = np.ascontiguousarray(np.asarray(frames_bgr[start:start + batch_size])[..., ::-1])
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255.0
        feats.append(net(x).double().cpu())
    return torch.cat(feats).numpy()


def trace_sqrt_product(features_a, features_b):
    """tr(sqrtm(cov_a @ cov_b)) without a general matrix square root (scipy's sqrtm of 2048x2048
    takes minutes on a small CPU). With centred, scaled features A (n_a x d) and B (n_b x d),
    cov_a cov_b = A'A B'B has the nonzero eigenvalues of (AB')(AB')', so the trace is the sum of
    the singular values of AB' (exact; used when a set has fewer frames than dimensions);
    otherwise sum(sqrt(eig(S cov_b S))) with S = cov_a^(1/2) from a symmetric eigendecomposition."""
    a = (features_a - features_a.mean(0)) / np.sqrt(len(features_a) - 1)
    b = (features_b - features_b.mean(0)) / np.sqrt(len(features_b) - 1)
    if min(len(a), len(b)) <= a.shape[1]:
        return float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    values, vectors = np.linalg.eigh(a.T @ a)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ (b.T @ b) @ root), 0, None)).sum())


def frechet_distance(features_a, features_b):
    """FID between two feature sets: |mu_a - mu_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr(sqrt(cov_a cov_b)),
    the quantity pytorch-fid's calculate_frechet_distance computes (there with scipy's sqrtm)."""
    features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    diff = features_a.mean(0) - features_b.mean(0)
    trace_a = float(np.var(features_a, axis=0, ddof=1).sum())
    trace_b = float(np.var(features_b, axis=0, ddof=1).sum())
    return float(diff @ diff + trace_a + trace_b - 2 * trace_sqrt_product(features_a, features_b))
