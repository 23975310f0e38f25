"""Batched SimCLR-style augmentation of uint8 image tensors, on the training device.

The paper augments one PIL image at a time in DataLoader workers (torchvision's
``RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter) -> RandomGrayscale ->
GaussianBlur``); here the whole batch at once, with no per-image Python loop.
:func:`sample_view_params` draws each image's parameters from torchvision's distributions
(kept apart, so they are testable and replayable, e.g. seeded validation views);
:func:`apply_view_params` applies them: crop, antialiased bilinear resize and flip as two
batched matrix products, then the colour ops with ``torchvision.transforms.v2``'s math. The
values differ from torchvision's only by rounding (it rounds to uint8 after every op; with
TF32 matmuls on CUDA the resize differs by at most 0.0026).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.nn import functional as F

from aavae.views.policy import ViewPolicy
from aavae.views.preprocessing import _check_images, _resize_weights

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's op ids
_CROP_TRIES = 10  # RandomResizedCrop.get_params's, before its central fallback


@dataclass
class ViewParams:
    """Per-image parameters of one batch of views (first dimension = image)."""

    crop_boxes: Tensor  # int64 (N, 4): top, left, height, width in input pixels
    flip: Tensor  # bool (N,)
    jitter: Tensor  # bool (N,): colour jitter applied at all
    jitter_factors: Tensor  # float32 (N, 4): brightness, contrast, saturation, hue
    jitter_order: Tensor  # int64 (N, 4): permutation of the op ids BRIGHTNESS..HUE
    grayscale: Tensor  # bool (N,)
    blur: Tensor  # bool (N,)
    blur_sigma: Tensor  # float32 (N,)
    image_size: tuple[int, int]  # (height, width) of the images the crop boxes were drawn for

    def __len__(self) -> int:
        return len(self.flip)

    def _map(self, change: Callable[[Tensor], Tensor]) -> ViewParams:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ViewParams(**{k: change(v) if isinstance(v, Tensor) else v
                             for k, v in values.items()})

    def slice(self, start: int, stop: int) -> ViewParams:
        """The parameters of images ``start:stop``: one rank's share of a global batch."""
        return self._map(lambda values: values[start:stop])

    def to(self, device: torch.device | str) -> ViewParams:
        return self._map(lambda values: values.to(device))


def sample_view_params(
    n: int,
    height: int,
    width: int,
    policy: ViewPolicy,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> ViewParams:
    """The parameters of ``n`` views of ``height x width`` images, drawn in a fixed order on
    the generator's device (a CPU generator gives the same views on every device), then moved
    to ``device``."""
    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return torch.empty(shape, device=generator.device).uniform_(low, high, generator=generator)

    crop_boxes = _sample_crop_boxes(n, height, width, policy, generator)
    flip = uniform(n) < policy.flip_p
    jitter = uniform(n) < policy.jitter_p
    jitter_factors = torch.stack(
        [uniform(n, low=low, high=high) for low, high in policy.jitter_ranges()], 1
    )
    jitter_order = uniform(n, 4).argsort(dim=1)  # a uniformly random permutation per image
    grayscale = uniform(n) < policy.grayscale_p
    blur = uniform(n) < policy.blur_p
    blur_sigma = uniform(n, low=policy.blur_sigma[0], high=policy.blur_sigma[1])
    params = ViewParams(
        crop_boxes,
        flip,
        jitter,
        jitter_factors,
        jitter_order,
        grayscale,
        blur,
        blur_sigma,
        image_size=(height, width),
    )
    return params.to(device)


def _sample_crop_boxes(
    n: int, height: int, width: int, policy: ViewPolicy, generator: torch.Generator
) -> Tensor:
    """RandomResizedCrop.get_params for n images at once: ten tries each, then a central crop."""
    options = {"device": generator.device, "dtype": torch.float64}
    area = height * width
    scale = torch.empty(n, _CROP_TRIES, **options).uniform_(*policy.crop_scale, generator=generator)
    log_ratio = torch.empty(n, _CROP_TRIES, **options).uniform_(
        math.log(policy.crop_ratio[0]), math.log(policy.crop_ratio[1]), generator=generator
    )
    aspect = log_ratio.exp()
    # torch.round rounds half to even, like the Python round() torchvision uses
    w = (area * scale * aspect).sqrt().round()
    h = (area * scale / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first try that fits
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    fallback_h, fallback_w = _central_crop_size(height, width, policy.crop_ratio)
    found = fits.any(dim=1)
    h = torch.where(found, h, float(fallback_h))
    w = torch.where(found, w, float(fallback_w))
    # torch.randint(0, size - extent + 1) per image; the fallback crop is centred
    top_draw = torch.empty(n, **options).uniform_(generator=generator)
    left_draw = torch.empty(n, **options).uniform_(generator=generator)
    top = torch.where(
        found, (top_draw * (height - h + 1)).floor(), float((height - fallback_h) // 2)
    )
    left = torch.where(
        found, (left_draw * (width - w + 1)).floor(), float((width - fallback_w) // 2)
    )
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _central_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """The whole image, clamped to the aspect-ratio range (torchvision's fallback)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def apply_view_params(
    images_uint8_nchw: Tensor,
    params: ViewParams,
    policy: ViewPolicy,
    out_size: int | None = None,
) -> Tensor:
    """A uint8 ``N x 3 x H x W`` batch augmented with drawn parameters: float32 in [0, 1],
    ``out_size`` (default the input's) a side, channels_last for the model that follows."""
    images = _check_images(images_uint8_nchw, "apply_view_params")
    height, width = images.shape[-2:]
    if len(params) != len(images) or tuple(params.image_size) != (height, width):
        raise ValueError(
            f"apply_view_params: {len(images)} images of {height}x{width} but parameters drawn "
            f"for {len(params)} of {params.image_size[0]}x{params.image_size[1]}; "
            "draw them with sample_view_params for this batch"
        )
    params = params.to(images.device)
    out_h, out_w = (height, width) if out_size is None else (int(out_size), int(out_size))

    views = _crop_resize_flip(images, params.crop_boxes, params.flip, out_h, out_w)
    _color_jitter_(views, params)
    _grayscale_(views, params.grayscale)
    _gaussian_blur_(
        views, params.blur, params.blur_sigma, policy.blur_kernel_size(min(out_h, out_w))
    )
    return views.clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)


def make_views(images: Tensor, policy: ViewPolicy, generator: torch.Generator) -> Tensor:
    """One random view of every image of a uint8 ``N x 3 x H x W`` batch (any memory format)."""
    images = _check_images(images, "make_views")
    n, _, height, width = images.shape
    params = sample_view_params(n, height, width, policy, generator, images.device)
    return apply_view_params(images, params, policy)




def _crop_resize_flip(
    images: Tensor, boxes: Tensor, flip: Tensor, out_h: int, out_w: int
) -> Tensor:
    """Crop each image to its box, resize bilinearly to out_h x out_w, mirror where flip: per
    image ``Wy @ crop @ Wx^T``, the crop and flip folded into the weights (two batched matmuls)."""
    n, channels, height, width = images.shape
    x = images.to(torch.float32, memory_format=torch.contiguous_format)
    top, left, box_h, box_w = boxes.to(torch.float32).unbind(dim=1)
    rows = _resize_weights(top, box_h, height, out_h) / 255.0  # to [0, 1] for free
    cols = _resize_weights(left, box_w, width, out_w, mirror=flip)
    x = torch.bmm(x.view(n, channels * height, width), cols.transpose(1, 2))
    return torch.matmul(rows.unsqueeze(1), x.view(n, channels, height, out_w))


# --- colour ops (float images in [0, 1], math of torchvision.transforms.v2.functional) --------


def _grayscale(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=-3)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(-3)


def _per_image(values: Tensor) -> Tensor:  # (M,) -> broadcastable over M x C x H x W
    return values.view(-1, 1, 1, 1)


def _blend(x: Tensor, target: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * target``, clamped: torchvision's _blend, per image."""
    return torch.lerp(target, x, _per_image(factor)).clamp_(0.0, 1.0)


def _adjust_brightness_contrast_or_saturation(x: Tensor, op_ids: Tensor, factor: Tensor) -> Tensor:
    """The three blends in one pass: each image's target (black, its mean or its grey) by op id."""
    gray = _grayscale(x)
    contrast = _per_image((op_ids == CONTRAST).to(x.dtype))
    saturation = _per_image((op_ids == SATURATION).to(x.dtype))
    target = gray * saturation + gray.mean(dim=(-3, -2, -1), keepdim=True) * contrast
    return _blend(x, target, factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by a per-image shift in [-0.5, 0.5] of a turn.

    Saturation and value, so the largest and smallest channel, stay. The hue is torchvision's
    (in sixths of a turn, ties resolved r, g, b); back to RGB in closed form: a channel sits at
    the max within 1/6 turn of its own hue (0, 2, 4 sixths), at the min beyond 2/6, on a ramp
    between. Masks multiplied in and a floor wrap: several times faster on CPU than where/%.
    """
    r, g, b = x.unbind(dim=-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    red_max = (maxc == r).to(x.dtype)  # float masks: multiplying by bool is slow on CPU
    green_max = (maxc == g).to(x.dtype).mul_(1.0 - red_max)
    blue_max = 1.0 - red_max - green_max
    # ((g - b) | (b - r) + 2 C | (r - g) + 4 C) / C, whichever channel is the max; 0 if C = 0
    sixths = (
        (g - b) * red_max + (b - r + 2.0 * chroma) * green_max + (r - g + 4.0 * chroma) * blue_max
    ) / chroma.clamp(min=1e-12)
    sixths += 6.0 * shift.view(-1, 1, 1)
    sixths -= 6.0 * torch.floor(sixths * (1.0 / 6.0))  # wrap to [0, 6)
    # 0, 2, 4 sixths for r, g, b; made on the device (a host list would be a copy per call)
    channel_hues = torch.arange(3, device=x.device, dtype=x.dtype).mul_(2.0).view(1, 3, 1, 1)
    # |hue - channel hue| is in [0, 6); the distance around the circle is 3 - |that - 3|
    distance = (sixths.unsqueeze(-3) - channel_hues).abs_()
    ramp = torch.rsub(distance.sub_(3.0).abs_(), 2.0).clamp_(0.0, 1.0)  # clamp(circular - 1, 0, 1)
    return torch.addcmul(maxc.unsqueeze(-3), chroma.unsqueeze(-3), ramp, value=-1.0)


def _update_where_(
    views: Tensor, mask: Tensor, op: Callable[..., Tensor], *per_image: Tensor
) -> None:
    """``views[i] = op(views[i], *(a[i] for a in per_image))`` for every image ``i`` in ``mask``.

    On the CPU only the masked images are computed; elsewhere the op runs on the whole batch
    and ``torch.where`` keeps it where masked: gathering needs the mask's count on the host, a
    round trip that stalls the launch queue, while a GPU's extra arithmetic is nearly free.
    """
    if not subset_by_index(views.device):
        views.copy_(torch.where(_per_image(mask), op(views, *per_image), views))
        return
    index = mask.nonzero().squeeze(1)
    if len(index):
        views[index] = op(views[index], *(values[index] for values in per_image))


def subset_by_index(device: torch.device) -> bool:
    """Whether ops that apply to some images gather those images (CPU) or mask (accelerators)."""
    return device.type == "cpu"


def _color_jitter_(views: Tensor, params: ViewParams) -> None:
    """Each jittered image's four ops in its own order: at each step the images due for a
    blend (brightness, contrast, saturation) take one shared pass, those due for hue another."""
    for step in range(4):
        op_ids = params.jitter_order[:, step]
        due_hue = op_ids == HUE
        factors = params.jitter_factors.gather(1, op_ids[:, None]).squeeze(1)
        _update_where_(
            views, params.jitter & ~due_hue, _adjust_brightness_contrast_or_saturation,
            op_ids, factors,
        )
        _update_where_(views, params.jitter & due_hue, adjust_hue, factors)


def _grayscale_(views: Tensor, mask: Tensor) -> None:
    _update_where_(views, mask, lambda x: _grayscale(x).expand(-1, 3, -1, -1))


def _gaussian_blur_(views: Tensor, mask: Tensor, sigma: Tensor, kernel_size: int) -> None:
    """Separable Gaussian blur with a per-image sigma and reflect padding (torchvision's)."""
    if kernel_size >= 3:
        _update_where_(views, mask, lambda x, s: _gaussian_blur(x, s, kernel_size), sigma)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32)
    kernels = torch.softmax(-0.5 * (offsets / sigma.view(-1, 1)) ** 2, dim=1)  # (M, k), sums to 1
    taps = [_per_image(kernels[:, t]) for t in range(kernel_size)]
    height, width = x.shape[-2:]
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    across = padded[..., :width] * taps[0]
    for t in range(1, kernel_size):
        across.addcmul_(padded[..., t : t + width], taps[t])
    down = across[..., :height, :] * taps[0]
    for t in range(1, kernel_size):
        down.addcmul_(across[..., t : t + height, :], taps[t])
    return down

