"""Multi-pass machinery shared by SmoothGrad, integrated gradients, expected gradients and occlusion.

These methods send many perturbed copies of every probe image through the network (noise samples, path points,
occluded copies). The copies of all images are laid out on one flat axis, image-major: copy ``k`` belongs to image
``k // copies_per_image`` and is that image's copy number ``k % copies_per_image`` (the order of Captum's
``repeat_interleave``). Copies are built lazily, one chunk at a time, and the chunk size is picked from a memory
budget measured on the model itself (:func:`chunk_size`), so a large probe never materialises all its copies at once.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from probelens.methods.hooks import probe_context
from probelens.methods.layers import unwrap_compiled

CPU_LARGEST_ACTIVATION_BYTES = 8 * 2**20
"""On CPU, chunks whose largest activation is about this size ran fastest (DESIGN §7: one giant batch was up to 2x
slower, glibc page faults on large tensors)."""
CPU_DEFAULT_BUDGET_BYTES = 256 * 2**20
"""Default ceiling on the activation memory of one chunk on CPU."""
CUDA_BUDGET_FRACTION = 0.25
"""Default ceiling on the activation memory of one chunk on CUDA, as a fraction of the free device memory."""

# per model (weakly referenced, so a freed model's entry goes away and a recycled id() can never hit a stale entry):
# per (example shape, dtype, device): (total, largest) bytes of module outputs for ONE example
_ACTIVATION_BYTES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, int]]] = weakref.WeakKeyDictionary()


def check_images(images: object) -> Tensor:
    """Raise a ``ValueError`` unless ``images`` is a floating-point ``[N,C,H,W]`` tensor; return it."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-D tensor [N,C,H,W], got {shape}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be a floating-point tensor, got dtype {images.dtype}")
    return images


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer ``>= minimum``; return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_chunk_size(value: object) -> int | None:
    """``None`` (pick automatically) or a positive integer."""
    if value is None:
        return None
    return check_count("chunk_size", value)


def _tensors(output: object) -> Iterator[Tensor]:
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


def activation_bytes(model: nn.Module, example: Tensor) -> tuple[int, int]:
    """Bytes of activations one example produces: ``(total, largest)``.

    Measured once per model and example shape/dtype/device with a no-grad forward pass of a single example, under
    forward hooks on every leaf module that add up the bytes of its outputs (a module that runs twice, such as the
    ReLU a ResNet block reuses, counts twice). The input itself is counted too. The result is cached.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        example: ``[N,C,H,W]`` (the first image is used) or one image ``[C,H,W]``.

    Returns:
        ``(total, largest)``: the summed bytes of all module outputs and the bytes of the largest one, per example.
    """
    net = unwrap_compiled(model)
    one = example[:1] if example.dim() == 4 else example[None]
    key = (tuple(one.shape[1:]), one.dtype, str(one.device))
    per_model = _ACTIVATION_BYTES.get(net)
    if per_model is not None and key in per_model:
        return per_model[key]
    input_bytes = one.numel() * one.element_size()
    sizes = [input_bytes]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        sizes.extend(t.numel() * t.element_size() for t in _tensors(output))

    handles = []
    try:
        for module in net.modules():
            if next(module.children(), None) is None:
                handles.append(module.register_forward_hook(hook))
        with probe_context(net), torch.no_grad():
            net(one.detach().clone())
    finally:
        for handle in handles:
            handle.remove()
    result = (sum(sizes), max(sizes))
    _ACTIVATION_BYTES.setdefault(net, {})[key] = result
    return result


def default_budget_bytes(device: torch.device) -> int:
    """256 MiB on CPU; on CUDA a quarter of the currently free device memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    return CPU_DEFAULT_BUDGET_BYTES


def chunk_size(
    model: nn.Module,
    example: Tensor,
    copies_per_image: int,
    budget_bytes: int | None = None,
    *,
    backward: bool = True,
) -> int:
    """How many perturbed copies to send through the network per forward (and backward) pass.

    With ``total`` and ``largest`` the activation bytes of one copy (:func:`activation_bytes`), the chunk is the
    largest count that keeps ``chunk * total * (2 if backward else 1)`` (activations kept for the backward pass plus
    their gradients) under ``budget_bytes``; on CPU it is further capped so that the largest activation of a chunk is
    about :data:`CPU_LARGEST_ACTIVATION_BYTES` (8 MiB), the fastest setting measured. It is at least 1 and at most the
    number of copies ``N * copies_per_image``.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        example: the probe batch ``[N,C,H,W]`` (or one image ``[C,H,W]``, ``N = 1``) on the device the passes run on.
        copies_per_image: perturbed copies per image (noise samples, path steps, occluded copies).
        budget_bytes: ceiling on the activation memory of one chunk; default :func:`default_budget_bytes`.
        backward: whether the passes also run a backward pass (doubles the estimate).

    Returns:
        The number of copies per chunk.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1))  # largest activation: 1 MiB per copy
        >>> chunk_size(net, torch.zeros(4, 3, 64, 64), copies_per_image=16)
        8
    """
    check_count("copies_per_image", copies_per_image)
    if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)):
        raise ValueError(f"budget_bytes must be a positive integer or None, got {budget_bytes!r}")
    if budget_bytes is not None and budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive integer or None, got {budget_bytes!r}")
    if example.dim() not in (3, 4):
        raise ValueError(f"example must be [N,C,H,W] or [C,H,W], got shape {tuple(example.shape)}")
    return _chunk_bounds(model, example, copies_per_image, budget_bytes, backward)[0]


def _chunk_bounds(
    model: nn.Module, example: Tensor, copies_per_image: int, budget_bytes: int | None, backward: bool
) -> tuple[int, int]:
    """``(chunk, limit)``: :func:`chunk_size`'s answer and the largest chunk the memory budget alone allows."""
    n = example.shape[0] if example.dim() == 4 else 1
    total_copies = max(1, n * copies_per_image)
    per_copy, largest = activation_bytes(model, example)
    budget = default_budget_bytes(example.device) if budget_bytes is None else budget_bytes
    limit = int(max(1, min(budget // max(1, per_copy * (2 if backward else 1)), total_copies)))
    if example.device.type != "cpu":
        return limit, limit
    return int(max(1, min(limit, round(CPU_LARGEST_ACTIVATION_BYTES / max(1, largest))))), limit


def chunk_ranges(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``size`` items covering ``range(total)``."""
    for start in range(0, total, size):
        yield start, min(start + size, total)


# per model (weakly referenced): per (method, probe shape, copies, dtype, device): the chunk size measured fastest
_TUNED_CHUNKS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


class TunedChunks:
    """Chunk sizes measured on the work itself: the first run tries half, once and twice the estimated chunk.

    On CPU the fastest chunk depends on the network as much as on its activation sizes (measured against Captum's
    batch settings: a 4-block VGG ran fastest with 16 copies per pass at 64 px, a ResNet-18 with 64), so no single
    byte rule fits. :meth:`ranges` hands out, for each candidate size, an untimed warm-up chunk (first-touch
    allocation and kernel selection for that batch shape land there) and then a chunk timed by how long the caller
    takes to come back for the next range; the rest goes in the size with the lowest time per copy. The choice is
    remembered per model and method/shape key, so later calls (later log steps) go straight to it. Work too small
    for two trials of every size drops the largest sizes; with fewer than two left it uses the estimate and
    remembers nothing. Only the chunking changes, never which copies are computed.

    Args:
        model: the network (the cache is kept per model, weakly referenced).
        key: what the choice is remembered under (method, shapes, device).
        base: the estimate (:func:`chunk_size`).
        limit: the largest chunk the memory budget allows.
    """

    def __init__(self, model: nn.Module, key: tuple, base: int, limit: int) -> None:
        self._cache = _TUNED_CHUNKS.setdefault(unwrap_compiled(model), {})
        self.key = key
        self.base = base
        self.limit = max(base, limit)

    @property
    def chosen(self) -> int | None:
        """The chunk size picked by an earlier run, if any."""
        return self._cache.get(self.key)

    def ranges(self, total: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` chunks covering ``range(total)`` in order (see the class docstring)."""
        if self.chosen is not None:
            yield from chunk_ranges(total, self.chosen)
            return
        candidates = sorted({max(1, self.base // 2), self.base, min(2 * self.base, self.limit)})
        while len(candidates) > 1 and 2 * sum(candidates) > total:  # not enough work: drop the largest
            candidates.pop()
        if len(candidates) < 2:
            yield from chunk_ranges(total, self.base)
            return
        start = 0
        per_copy: dict[int, float] = {}
        for size in candidates:
            yield start, start + size  # warm-up at this size, untimed
            start += size
            began = time.perf_counter()
            yield start, start + size
            per_copy[size] = (time.perf_counter() - began) / size
            start += size
        best = min(per_copy, key=per_copy.__getitem__)
        self._cache[self.key] = best
        for begin in range(start, total, best):
            yield begin, min(begin + best, total)


Chunking = int | TunedChunks
"""A fixed chunk size, or chunk sizes tuned on the run (:class:`TunedChunks`)."""


def auto_chunks(
    model: nn.Module, example: Tensor, copies_per_image: int, method: str, *, backward: bool = True
) -> Chunking:
    """The chunking a multi-pass method uses when the caller gave no ``chunk_size``.

    On CPU a :class:`TunedChunks` around the :func:`chunk_size` estimate; elsewhere the estimate itself (on CUDA
    the memory budget is the binding limit and larger batches are not slower).
    """
    check_count("copies_per_image", copies_per_image)
    base, limit = _chunk_bounds(model, example, copies_per_image, None, backward)
    if example.device.type != "cpu":
        return base
    key = (method, tuple(example.shape), copies_per_image, backward, example.dtype, str(example.device))
    return TunedChunks(model, key, base, limit)


def _ranges(total: int, chunk: Chunking) -> Iterator[tuple[int, int]]:
    if isinstance(chunk, TunedChunks):
        return chunk.ranges(total)
    check_count("chunk", chunk)
    return chunk_ranges(total, chunk)


def copy_owners(start: int, stop: int, copies_per_image: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For the flat copies ``start..stop-1``: the image each belongs to and its copy number within that image."""
    k = torch.arange(start, stop, device=device)
    return k // copies_per_image, k % copies_per_image


def map_chunks(fn: Callable[[int, int], Tensor], total: int, chunk: Chunking) -> Tensor:
    """Run ``fn(start, stop)`` over consecutive chunks of a batch of ``total`` items and concatenate the results.

    ``fn`` builds and processes the items ``start..stop-1`` itself, so the full batch never has to exist at once; it
    returns a tensor whose first dimension is ``stop - start``.
    """
    return torch.cat([fn(start, stop) for start, stop in _ranges(total, chunk)], dim=0)


def sum_over_copies(
    fn: Callable[[int, int], Tensor], num_images: int, copies_per_image: int, chunk: Chunking
) -> Tensor:
    """``out[i] = sum_s fn-result for copy (i, s)``: per-image sums over the flat copy axis, chunk by chunk.

    ``fn(start, stop)`` returns ``[stop - start, ...]`` for the flat copies ``start..stop-1`` (image-major); only one
    chunk's results are alive at a time. Copies are added in flat order whatever the chunk size.

    Returns:
        ``[num_images, ...]``.
    """
    total: Tensor | None = None
    for start, stop in _ranges(num_images * copies_per_image, chunk):
        part = fn(start, stop)
        owners = torch.arange(start, stop, device=part.device) // copies_per_image
        if total is None:
            total = part.new_zeros((num_images, *part.shape[1:]))
        total.index_add_(0, owners, part)
    if total is None:
        raise ValueError("nothing to sum: the batch is empty")
    return total


class GaussianNoise:
    """Standard normal noise for the flat copies of a batch, from a private generator, independent of chunking.

    Every copy draws its own ``[C,H,W]`` block, in flat order, from one ``torch.Generator(device).manual_seed(seed)``,
    so the noise of copy ``k`` is the same whether copies are requested in chunks of 1 or all at once. The global RNG
    is never used. Ranges must be requested in order (``0..a``, ``a..b``, ...).

    Args:
        images: ``[N,C,H,W]``; fixes shape, device and dtype.
        copies_per_image: copies per image.
        scale: per-image standard deviation ``[N]`` (or a float for all images).
        seed: generator seed, or a private generator on the images' device to continue drawing from.
    """

    def __init__(
        self, images: Tensor, copies_per_image: int, scale: Tensor | float, seed: int | torch.Generator
    ) -> None:
        self.shape = tuple(images.shape[1:])
        self.copies_per_image = copies_per_image
        self.dtype = images.dtype
        self.device = images.device
        n = images.shape[0]
        self.scale = torch.as_tensor(scale, dtype=images.dtype, device=images.device).expand(n).clone()
        if isinstance(seed, torch.Generator):
            self.generator = seed
        else:
            self.generator = torch.Generator(device=images.device).manual_seed(seed)
        self._next = 0

    def __call__(self, start: int, stop: int) -> Tensor:
        """Noise ``[stop - start, C, H, W]`` for the flat copies ``start..stop-1``."""
        if start != self._next:
            raise RuntimeError(f"noise must be drawn in order: expected copies from {self._next}, got {start}")
        self._next = stop
        draws = [
            torch.randn(self.shape, generator=self.generator, device=self.device, dtype=self.dtype)
            for _ in range(start, stop)
        ]
        owners = torch.arange(start, stop, device=self.device) // self.copies_per_image
        return torch.stack(draws) * self.scale[owners].view(-1, *([1] * len(self.shape)))


def flat_noise_source(noise: Tensor | Callable[[int, int], Tensor], images: Tensor, copies_per_image: int):
    """Accept noise as a callable ``(start, stop) -> [stop-start,C,H,W]`` or as a tensor ``[N,S,C,H,W]`` /
    ``[N*S,C,H,W]`` (image-major) and return the callable."""
    if callable(noise) and not isinstance(noise, Tensor):
        return noise
    n = images.shape[0]
    expected = (n * copies_per_image, *images.shape[1:])
    if not isinstance(noise, Tensor) or math.prod(noise.shape) != math.prod(expected):
        shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise must have {expected[0]} copies of shape {tuple(images.shape[1:])}, got {shape}")
    flat = noise.reshape(expected).to(device=images.device, dtype=images.dtype)
    return lambda start, stop: flat[start:stop]
