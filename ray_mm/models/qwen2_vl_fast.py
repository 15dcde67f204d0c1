"""Hand-tuned Qwen2-VL pixel path: one image or one video to exactly the HF fast processor's patches.

This module owns the CPU pixel pipeline behind ``Qwen2VLAdapter.process_image`` /
``process_video``: smart-resize, uint8 resize, rescale+normalise and patchify of one
item, with the same values the HF ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor``
(torchvision backend) give for that item inside a whole request. It also owns the
per-thread scratch arena those steps reuse. Anything it does not reproduce exactly is
refused with :class:`FastPathUnsupported` before any work, so the caller can use the
HF processor instead.

Buffer ownership: only *scratch* (the resized uint8 frames and the float32 band used
for normalisation) lives in the arena and is reused across calls. Every returned
array is owned by the caller: freshly allocated, so it may be kept (the in-process
pipeline returns it, a content-hash cache stores it), unless the caller activated a
per-call output arena (:mod:`ray_mm.buffers`, media workers only), where it lives until
the caller's next call.
"""

from __future__ import annotations

import platform
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ray_mm.buffers import new_output

__all__ = ["FastPathUnsupported", "PixelResult", "PixelSettings", "QwenPixelPath", "ScratchArena", "fused_mean_std",
           "patchify_uint8"]

# Float32 band of the normalisation scratch, in elements (4 MiB). Normalising a band of
# merge rows at a time keeps the band in cache between the u8->f32 copy, the in-place
# sub/div and the patchify copy; one band per whole image measured ~15% slower at 1080p.
_BAND_ELEMENTS = 1 << 20


class FastPathUnsupported(Exception):
    """The hand path cannot reproduce the HF processor for this input or setting; use the HF processor."""


@dataclass(frozen=True)
class PixelResult:
    """One item's patches and grid, as the HF processor returns them for that item alone."""

    #: ``(grid_t * grid_h * grid_w, C * temporal_patch_size * patch_size**2)`` float32 normalised
    #: patches; or, for the uint8 transport, the resized uint8 pixels once, ``(F, H, W, 3)`` (F = 1
    #: for an image, the frame count of a video; no temporal tiling or padding, not patchified).
    #: Fresh, owned by the caller.
    values: np.ndarray
    #: ``(grid_t, grid_h, grid_w)``, grid_h / grid_w in patches.
    grid_thw: tuple[int, int, int]


@dataclass(frozen=True)
class PixelSettings:
    """The processor attributes the hand path needs (read from an HF Qwen2-VL image / video processor)."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float
    #: ``"bicubic"`` or ``"bilinear"`` (antialiased, as the processor's torchvision resize).
    interpolation: str
    min_pixels: int
    max_pixels: int
    do_convert_rgb: bool = True
    #: Video only: the qwen-vl-utils style per-frame cap on the total video pixel budget.
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000
    #: Video only: what ``size`` bounds. ``"frame"``: each frame (Qwen2-VL / Qwen2.5-VL's
    #: ``Qwen2VLVideoProcessor``); ``"video"``: the whole ``t * h * w`` (``Qwen3VLVideoProcessor``,
    #: whose ``smart_resize`` takes the frame count and whose cap is a per-frame share of it).
    video_budget: str = "frame"

    @classmethod
    def from_processor(cls, proc: Any) -> PixelSettings:
        """Read an HF Qwen2-VL image or video processor; :class:`FastPathUnsupported` for settings not reproduced."""
        if not getattr(proc, "do_resize", True):
            raise FastPathUnsupported("do_resize=False")
        mean, std = proc.image_mean, proc.image_std
        if not (isinstance(mean, Sequence) and isinstance(std, Sequence) and len(mean) == 3 and len(std) == 3):
            raise FastPathUnsupported(f"image_mean / image_std must have 3 channels, got {mean!r} / {std!r}")
        size = proc.size
        shortest = size.get("shortest_edge") if isinstance(size, Mapping) else getattr(size, "shortest_edge", None)
        longest = size.get("longest_edge") if isinstance(size, Mapping) else getattr(size, "longest_edge", None)
        if not shortest or not longest:
            raise FastPathUnsupported(f"size must carry shortest_edge and longest_edge, got {size!r}")
        return cls(
            patch_size=int(proc.patch_size),
            temporal_patch_size=int(proc.temporal_patch_size),
            merge_size=int(proc.merge_size),
            image_mean=tuple(float(x) for x in mean),
            image_std=tuple(float(x) for x in std),
            rescale_factor=float(proc.rescale_factor),
            interpolation=_interpolation_name(proc.resample),
            min_pixels=int(shortest),
            max_pixels=int(longest),
            do_convert_rgb=bool(getattr(proc, "do_convert_rgb", True)),
            cap_pixels_per_frame=bool(getattr(proc, "cap_pixels_per_frame", None) or False),
            max_video_tokens=int(getattr(proc, "max_video_tokens", 128000) or 128000),
            video_budget=_video_budget(proc),
        )


def _video_budget(proc: Any) -> str:
    """``"video"`` for a Qwen3-VL video processor (its own ``resize``), ``"frame"`` otherwise."""
    try:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    except ImportError:  # pragma: no cover - transformers without Qwen3-VL
        return "frame"
    if not isinstance(proc, Qwen3VLVideoProcessor):
        return "frame"
    if type(proc).resize is not Qwen3VLVideoProcessor.resize:
        raise FastPathUnsupported(f"{type(proc).__name__} overrides Qwen3-VL's resize")
    return "video"


def _interpolation_name(resample: Any) -> str:
    """The torchvision interpolation the processor resizes with, if the hand path resizes it identically."""
    from torchvision.transforms.v2 import InterpolationMode

    if isinstance(resample, InterpolationMode):
        mode = resample
    else:
        from transformers.image_utils import pil_torch_interpolation_mapping

        mode = pil_torch_interpolation_mapping.get(resample) if resample is not None else InterpolationMode.BILINEAR
    if mode == InterpolationMode.BICUBIC:
        return "bicubic"
    # torchvision resizes uint8 natively (no float round trip) for bilinear only on these CPUs;
    # elsewhere it goes through float32 and rounds, which this path does not reproduce.
    if mode == InterpolationMode.BILINEAR and (
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    ):
        return "bilinear"
    raise FastPathUnsupported(f"resample {resample!r}")


class ScratchArena:
    """Grow-only scratch buffers keyed by (role, dtype), reused across calls.

    A request asks for ``numel`` elements of a role; the arena hands out a view of its
    buffer for that role, replacing the buffer only when it is too small. So in steady
    state (same or smaller shapes) no call allocates fresh scratch. Views handed out are
    valid until the next request for the same role: never return them to callers.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, role: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat view of at least ``numel`` elements of the ``role`` buffer (contents undefined)."""
        key = (role, dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype)
            self._buffers[key] = buf
        return buf[:numel]

    def data_ptrs(self) -> dict[tuple[str, torch.dtype], int]:
        """Where each buffer lives (tests use it to check that a repeated call reused them)."""
        return {key: buf.data_ptr() for key, buf in self._buffers.items()}

    def buffers(self) -> dict[tuple[str, torch.dtype], torch.Tensor]:
        return dict(self._buffers)

    @property
    def nbytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for buf in self._buffers.values())


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, video: bool) -> tuple[int, int]:
    # Call the processor's own function (not a copy) so rounding can never drift from HF's.
    if video:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize
    else:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h), int(w)


def _qwen3_video_size(num_frames: int, height: int, width: int, factor: int, s: PixelSettings,
                      min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``Qwen3VLVideoProcessor.resize``'s target: ``size`` bounds the whole video; with the cap, each
    frame gets ``max(min(max_video_tokens * factor**2, longest_edge // T), 1.05 * shortest_edge)`` pixels.
    Raises the processor's own ``ValueError`` (fewer frames than the temporal patch, aspect ratio)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    if s.cap_pixels_per_frame:
        per_frame = max(min(s.max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    h, w = smart_resize(num_frames, height, width, temporal_factor=s.temporal_patch_size, factor=factor,
                        min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h), int(w)


_readonly_warning_lock = threading.Lock()
_readonly_warning_primed = False


def _tensor_from_readonly(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` on a read-only array (e.g. a zero-copy view of PIL's pixel memory).

    Torch warns once per process that it cannot mark the tensor read-only. The hand path
    only ever reads these tensors, so the one warning is consumed here, under a lock, and
    no user ever sees it; later calls go straight through.
    """
    global _readonly_warning_primed
    if not _readonly_warning_primed:
        with _readonly_warning_lock:
            if not _readonly_warning_primed:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    tensor = torch.from_numpy(array)
                _readonly_warning_primed = True
                return tensor
    return torch.from_numpy(array)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array) if array.flags.writeable else _tensor_from_readonly(array)


def _pil_rgbx_view(image: Any) -> torch.Tensor | None:
    """Zero-copy ``(1, 4, H, W)`` uint8 view of an RGB PIL image's own memory (RGBX), or None.

    Pillow keeps RGB as 4 bytes a pixel; ``np.asarray`` repacks that to 3 bytes (about
    5 ms at 1080p). Pillow >= 11.2 exports its memory through the Arrow C interface
    (single-block images only), and torch's uint8 resize works in 4-byte pixels anyway,
    with each channel computed independently, so the padding byte is simply carried along
    and dropped at patchify. Any failure (older Pillow, no pyarrow, multi-block image)
    returns None and the caller copies with ``np.asarray``.
    """
    if not hasattr(image, "__arrow_c_array__"):
        return None
    try:
        import pyarrow as pa

        exported = pa.array(image)
        if not pa.types.is_fixed_size_list(exported.type) or exported.type.list_size != 4 or exported.offset != 0:
            return None
        flat = exported.values.to_numpy(zero_copy_only=True)
    except Exception:  # noqa: BLE001 - any export problem just means "copy instead"
        return None
    width, height = image.size
    if flat.dtype != np.uint8 or flat.size != width * height * 4:
        return None
    return _as_tensor(flat).view(1, height, width, 4).permute(0, 3, 1, 2)


class QwenPixelPath:
    """Qwen2-VL pixels for one item: smart-resize, uint8 resize, rescale+normalise, patchify.

    Built from an HF processor's attributes (:meth:`from_processor`). For the item it is
    given it returns exactly what the HF fast processor returns for that item:
    ``pixel_values`` / ``pixel_values_videos`` (float32) and the grid. With ``normalize=False``
    (the uint8 transport) it returns the resized uint8 pixels instead, ``(F, H, W, 3)``, each
    frame once; :func:`patchify_uint8` turns them into the float32 patches later (GPU side).

    How it matches HF bit for bit while doing less work:

    - input: an RGB PIL image is read in place (Pillow's own RGBX memory, no 3-byte repack);
      other PIL modes go through the processor's own RGB conversion;
    - resize: the same aten antialiased uint8 kernel torchvision calls, on a channels-last
      view of the HWC pixels (no CHW copy first) and into an arena buffer (``out=``);
      skipped when smart-resize keeps the size, as torchvision does;
    - normalise: u8 -> f32, ``sub_(mean / rescale)``, ``div_(std / rescale)``, the processor's
      fused constants computed the same way and applied in the same float op order, one
      cache-sized band of rows at a time;
    - patchify: one strided copy from the normalised band into the caller's fresh output;
      temporal tiling of images / padding of videos by repeating the last frame is a
      broadcast view of the band, not a copy of the frames.

    Scratch comes from a per-thread :class:`ScratchArena` (threads never share scratch).
    Runs with torch's current thread settings.
    """

    def __init__(self, settings: PixelSettings) -> None:
        self.settings = settings
        s = settings
        # The processor's fused rescale+normalise constants, computed exactly as
        # TorchvisionBackend._fuse_mean_std_and_rescale_factor does (float32 tensor times a
        # Python float), so the float ops below give HF's values bit for bit.
        self._mean = (torch.tensor(s.image_mean) * (1.0 / s.rescale_factor)).view(1, 3, 1, 1)
        self._std = (torch.tensor(s.image_std) * (1.0 / s.rescale_factor)).view(1, 3, 1, 1)
        if bool((self._std == 0).any()):
            raise FastPathUnsupported("image_std has a zero")
        self._resize_op = (
            torch._C._nn._upsample_bicubic2d_aa if s.interpolation == "bicubic" else torch._C._nn._upsample_bilinear2d_aa
        )
        self._check_resize_op()
        self._local = threading.local()

    def _check_resize_op(self) -> None:
        """The private aten op (called for its ``out=``) must still equal ``F.interpolate``; else refuse.

        A guard against a torch upgrade renaming or changing it: one tiny resize at construction.
        """
        probe = torch.arange(2 * 11 * 9 * 3, dtype=torch.uint8).view(2, 11, 9, 3).permute(0, 3, 1, 2)
        out = torch.empty((2, 5, 4, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        try:
            self._resize_op(probe, [5, 4], False, None, None, out=out)
        except (RuntimeError, TypeError) as exc:
            raise FastPathUnsupported(f"aten resize op unusable: {exc}") from exc
        expected = torch.nn.functional.interpolate(probe, size=[5, 4], mode=self.settings.interpolation,
                                                   align_corners=False, antialias=True)
        if not torch.equal(out, expected):
            raise FastPathUnsupported("aten resize op differs from F.interpolate")

    @classmethod
    def from_processor(cls, proc: Any) -> QwenPixelPath:
        return cls(PixelSettings.from_processor(proc))

    @property
    def arena(self) -> ScratchArena:
        """This thread's scratch arena."""
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = ScratchArena()
            self._local.arena = arena
        return arena

    # ------------------------------------------------------------------ inputs

    def image_source(self, image: Any) -> torch.Tensor:
        """``(1, C, H, W)`` uint8 channels-last view of one image (C = 3, or 4 for RGBX PIL memory).

        Accepts what the hand path reproduces exactly: a PIL image (converted to RGB the
        way the processor does), or an ``(H, W, 3)`` uint8 numpy array that the processor
        would also read as channels-last. Anything else: :class:`FastPathUnsupported`.
        """
        from PIL import Image

        if isinstance(image, Image.Image):
            if image.mode == "RGB" and image.info.get("transparency") is None:
                view = _pil_rgbx_view(image)
                if view is not None:
                    return view
                return _as_tensor(np.asarray(image)).permute(2, 0, 1).unsqueeze(0)
            if not self.settings.do_convert_rgb:
                raise FastPathUnsupported(f"PIL mode {image.mode!r} with do_convert_rgb=False")
            # Same conversion the processor applies to PIL input (alpha composited on white).
            from transformers.image_transforms import convert_to_rgb

            rgb = np.ascontiguousarray(convert_to_rgb(image, return_numpy=True))
            return _as_tensor(rgb).permute(2, 0, 1).unsqueeze(0)
        if isinstance(image, np.ndarray):
            # The processor infers the channel axis; it reads (H, W, 3) as channels-last only
            # when the first axis is not also a plausible channel count (1, 3, 4).
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] in (1, 3, 4):
                raise FastPathUnsupported(f"array image of shape {image.shape} and dtype {image.dtype}")
            return _as_tensor(image).permute(2, 0, 1).unsqueeze(0)
        raise FastPathUnsupported(f"image of type {type(image).__name__}")

    @staticmethod
    def video_source(frames: Any) -> torch.Tensor:
        """``(T, 3, H, W)`` uint8 channels-last view of ``(T, H, W, 3)`` uint8 frames."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise FastPathUnsupported("video frames must be a (T, H, W, 3) uint8 array")
        # The video processor infers the channel axis from the frame shape; H of 1 or 3 reads as channels-first.
        if frames.shape[0] == 0 or frames.shape[1] in (1, 3):
            raise FastPathUnsupported(f"video frames of shape {frames.shape}")
        return _as_tensor(frames).permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ items

    def image(self, image: Any, *, min_pixels: int | None = None, max_pixels: int | None = None,
              normalize: bool = True) -> PixelResult:
        """One image's ``pixel_values`` and ``image_grid_thw`` (the image tiled over the temporal patch)."""
        s = self.settings
        src = self.image_source(image)
        height, width = int(src.shape[-2]), int(src.shape[-1])
        new_h, new_w = _smart_resize(height, width, s.patch_size * s.merge_size,
                                     s.min_pixels if min_pixels is None else int(min_pixels),
                                     s.max_pixels if max_pixels is None else int(max_pixels), video=False)
        resized = self._resize(src, new_h, new_w)
        if not normalize:
            return self._pixels(resized, grid_t=1)
        return self._patchify(resized, grid_t=1)

    def video(self, frames: Any, *, min_pixels: int | None = None, max_pixels: int | None = None,
              normalize: bool = True) -> PixelResult:
        """One video's ``pixel_values_videos`` and ``video_grid_thw`` (frames already sampled)."""
        s = self.settings
        src = self.video_source(frames)
        num_frames, height, width = int(src.shape[0]), int(src.shape[-2]), int(src.shape[-1])
        factor = s.patch_size * s.merge_size
        lo = s.min_pixels if min_pixels is None else int(min_pixels)
        hi = s.max_pixels if max_pixels is None else int(max_pixels)
        if s.video_budget == "video":
            new_h, new_w = _qwen3_video_size(num_frames, height, width, factor, s, lo, hi)
        else:
            if s.cap_pixels_per_frame:
                # Qwen2VLVideoProcessor.resize: an even share of the total video budget per frame.
                total_pixels = int(s.max_video_tokens * factor * factor * 0.9)
                hi = max(min(hi, total_pixels * s.temporal_patch_size // num_frames), int(lo * 1.05))
            new_h, new_w = _smart_resize(height, width, factor, lo, hi, video=True)
        resized = self._resize(src, new_h, new_w)
        grid_t = -(-num_frames // s.temporal_patch_size)
        if not normalize:
            return self._pixels(resized, grid_t=grid_t)
        return self._patchify(resized, grid_t=grid_t)

    # ------------------------------------------------------------------ steps

    def _resize(self, src: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
        """``src`` resized into the arena (channels-last, same channel count), or ``src`` itself when the size holds."""
        frames, channels, height, width = (int(x) for x in src.shape)
        if (new_h, new_w) == (height, width):
            return src  # torchvision returns the image untouched in this case
        flat = self.arena.take("resized", frames * new_h * new_w * channels, torch.uint8)
        out = flat.view(frames, new_h, new_w, channels).permute(0, 3, 1, 2)
        # The aten kernel F.interpolate(antialias=True) dispatches to (what tvF.resize runs on
        # uint8 CPU input), called with out= so the result lands in the arena. A channels-last
        # out for a channels-last input keeps the kernel on its direct path.
        self._resize_op(src, [new_h, new_w], False, None, None, out=out)
        return out

    def _pixels(self, frames: torch.Tensor, grid_t: int) -> PixelResult:
        """The uint8 transport: ``frames`` ``(F, C>=3, H, W)`` (channels-last) as one fresh ``(F, H, W, 3)``
        uint8 array, each frame once (one strided copy, dropping the RGBX padding byte)."""
        p = self.settings.patch_size
        num_frames, _, height, width = (int(x) for x in frames.shape)
        out = new_output((num_frames, height, width, 3), torch.uint8)  # caller-owned, as in _patchify
        out.copy_(frames[:, :3].permute(0, 2, 3, 1))
        return PixelResult(out.numpy(), (grid_t, height // p, width // p))

    def _patchify(self, frames: torch.Tensor, grid_t: int) -> PixelResult:
        """Patches of ``frames`` ``(F, C>=3, H, W)`` uint8: rows ``(t, h/m, w/m, m, m)``, columns ``(C, Tp, p, p)``.

        Temporal group ``g`` takes frames ``g*Tp ...``; slots past the last frame repeat the
        last frame (an image, F = 1, is tiled over the whole temporal patch; a video with a
        frame count not divisible by Tp gets its last frame repeated), as the processors do.
        """
        s = self.settings
        p, m, tp = s.patch_size, s.merge_size, s.temporal_patch_size
        num_frames, _, height, width = (int(x) for x in frames.shape)
        grid_h, grid_w = height // p, width // p
        rows_per_group = grid_h * grid_w
        # Caller-owned output: fresh (torch.empty, like the HF path), or from the per-call output arena
        # a media worker activates (ray_mm.buffers), whose pages are already mapped. Not np.empty:
        # numpy asks for transparent huge pages on big arrays, and on this VM a fresh 45 MB array
        # then measured ~100 ms to fill once earlier results stayed alive (~17 ms with 4 KiB pages).
        out = new_output((grid_t * rows_per_group, 3 * tp * p * p), torch.float32)
        result = out.numpy()
        merge_rows = grid_h // m
        for g in range(grid_t):
            first = g * tp
            real = min(tp, num_frames - first)  # frames of this group; the rest repeat the last one
            per_merge_row = real * 3 * m * p * width
            band_rows = max(1, min(merge_rows, _BAND_ELEMENTS // per_merge_row))
            # Always ask for the full band capacity, so items of any size under it share one buffer.
            band = self.arena.take("band", max(_BAND_ELEMENTS, per_merge_row), torch.float32)
            for b0 in range(0, merge_rows, band_rows):
                nb = min(band_rows, merge_rows - b0)
                y0, y1 = b0 * m * p, (b0 + nb) * m * p
                src = frames[first : first + real, :3, y0:y1]
                scratch = band[: real * 3 * (y1 - y0) * width].view(real, 3, y1 - y0, width)
                scratch.copy_(src)  # u8 -> f32, as the processor's images.to(torch.float32)
                scratch.sub_(self._mean).div_(self._std)
                # (real, C, nb, m, p, w/m, m, p) -> (nb, w/m, m, m, C, real, p, p)
                patches = scratch.unflatten(2, (nb, m, p)).unflatten(-1, (grid_w // m, m, p)).permute(2, 5, 3, 6, 1, 0, 4, 7)
                n_rows = nb * (grid_w // m) * m * m
                r0 = g * rows_per_group + b0 * (grid_w // m) * m * m
                dst = out[r0 : r0 + n_rows].view(nb, grid_w // m, m, m, 3, tp, p, p)
                if real == tp:
                    dst.copy_(patches)
                else:
                    if real > 1:
                        dst[:, :, :, :, :, : real - 1].copy_(patches[:, :, :, :, :, : real - 1])
                    last = patches[:, :, :, :, :, real - 1 : real]
                    dst[:, :, :, :, :, real - 1 :].copy_(last.expand(-1, -1, -1, -1, -1, tp - real + 1, -1, -1))
        return PixelResult(result, (grid_t, grid_h, grid_w))


def fused_mean_std(image_mean: Sequence[float], image_std: Sequence[float],
                   rescale_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's fused rescale+normalise constants, as ``TorchvisionBackend._fuse_mean_std_and_rescale_factor``
    computes them (a float32 tensor times a Python float), CPU float32, shape ``(C,)``."""
    return (torch.tensor(list(image_mean)) * (1.0 / rescale_factor),
            torch.tensor(list(image_std)) * (1.0 / rescale_factor))


def patchify_uint8(pixels: torch.Tensor, *, patch_size: int, temporal_patch_size: int, merge_size: int,
                   mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The uint8 transport's GPU side: resized uint8 pixels ``(F, H, W, C)`` (each frame once) to exactly
    the processor's float32 patches ``(grid_t * grid_h * grid_w, C * Tp * p * p)``.

    Torch ops on ``pixels``' device: u8 -> f32, ``sub(mean).div(std)`` with the fused constants
    (:func:`fused_mean_std`; the processor's op order, so the values are bit for bit its own), frames
    padded to a multiple of the temporal patch by repeating the last one (an image, F = 1, tiled over
    it; a broadcast view, not a copy), then one copy into rows ``(t, h/m, w/m, m, m)`` and columns
    ``(C, Tp, p, p)``, the order of the processors' ``patches.reshape(...).permute(...)``.
    """
    if pixels.ndim != 4 or pixels.dtype != torch.uint8:
        raise ValueError(f"uint8 pixels must be (F, H, W, C) uint8, got {pixels.dtype} {tuple(pixels.shape)}")
    num_frames, height, width, channels = (int(x) for x in pixels.shape)
    p, m, tp = int(patch_size), int(merge_size), int(temporal_patch_size)
    if num_frames == 0 or height % (p * m) or width % (p * m):
        raise ValueError(f"uint8 pixels of shape {tuple(pixels.shape)} do not tile into {p * m}-pixel merge blocks")
    device = pixels.device
    # Normalised in the shipped (F, H, W, C) layout: elementwise, so the same values as on (C, H, W), and
    # measured ~25x faster on CPU than on a channels-first view of it.
    normed = pixels.to(torch.float32).sub_(mean.to(device)).div_(std.to(device))
    grid_t, grid_h, grid_w = -(-num_frames // tp), height // p, width // p
    pad = grid_t * tp - num_frames
    if pad and num_frames == 1:  # an image: a view over the temporal patch, copied once by the reshape below
        normed = normed.expand(grid_t * tp, -1, -1, -1)
    elif pad:
        normed = torch.cat([normed, normed[-1:].expand(pad, -1, -1, -1)])
    # (grid_t, Tp, h/m, m, p, w/m, m, p, C) -> (grid_t, h/m, w/m, m, m, C, Tp, p, p)
    patches = normed.reshape(grid_t, tp, grid_h // m, m, p, grid_w // m, m, p, channels)
    patches = patches.permute(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
