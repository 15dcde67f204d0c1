"""``AudioMediaIO``: encoded audio (or an in-process array) to mono float32 at the target rate.

Channels are averaged (the librosa ``to_mono`` convention).

Owns audio decode (PyAV from an in-memory buffer, allowed demuxers only),
resampling (``av.AudioResampler``) and the duration cap. The cap is checked
twice: from the header, to refuse early, and again while decoding, because a
header can lie and must not let a long file through.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np

from ray_mm.config import AudioSampling, MediaPolicy
from ray_mm.errors import MediaDecodeError, MediaLimitError, MMError
from ray_mm.media.base import DEFAULT_LABEL, MediaIO
from ray_mm.media.video import open_container


class AudioMediaIO(MediaIO[np.ndarray]):
    """Decode audio to a 1-D float32 array at ``sampling.sample_rate`` (mono)."""

    def __init__(self, policy: MediaPolicy, sampling: AudioSampling | None = None) -> None:
        self.policy = policy
        self.sampling = sampling or AudioSampling()

    def _limit(self, seconds: float, label: str) -> MediaLimitError:
        return MediaLimitError(
            f"{label}: audio lasts at least {seconds:.1f}s, over the cap of {self.policy.max_audio_duration_s}s"
        )

    def _resampler(self) -> av.AudioResampler:
        # Keep the input's channels (layout=None) and average them ourselves below: FFmpeg's own
        # stereo->mono matrix adds the channels at -3 dB, which is ~1.41x louder than the
        # channel mean that librosa (the usual reference loader) takes, and can clip.
        return av.AudioResampler(format="fltp", layout=None, rate=self.sampling.sample_rate)

    @staticmethod
    def _mono(frame: av.AudioFrame) -> np.ndarray:
        planes = frame.to_ndarray()  # (channels, samples) for planar float
        return planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)

    def load_bytes(self, data: bytes, *, label: str = DEFAULT_LABEL, options: dict[str, Any] | None = None) -> np.ndarray:
        try:
            return self._decode(data, label)
        except MMError:
            raise
        except Exception as exc:  # av.FFmpegError and whatever else corrupt input triggers
            raise MediaDecodeError(f"{label}: cannot decode audio ({type(exc).__name__}: {exc})") from None

    def _decode(self, data: bytes, label: str) -> np.ndarray:
        cap = self.policy.max_audio_duration_s
        with open_container(data, self.policy.audio_formats, "audio", label) as container:
            if not container.streams.audio:
                raise MediaDecodeError(f"{label}: no audio stream")
            stream = container.streams.audio[0]
            stream.codec_context.thread_count = 1
            # Header check first: refuses most long files before decoding a sample.
            header_s = self._header_duration(container, stream)
            if header_s is not None and header_s > cap:
                raise self._limit(header_s, label)
            resampler = self._resampler()
            parts: list[np.ndarray] = []
            in_seconds = 0.0
            for frame in container.decode(stream):
                # Count input samples at their own rate: a lying header stops here.
                in_seconds += frame.samples / float(frame.sample_rate or self.sampling.sample_rate)
                if in_seconds > cap:
                    raise self._limit(in_seconds, label)
                frame.pts = None  # let the resampler run on sample counts, not on gappy timestamps
                parts.extend(self._mono(out) for out in resampler.resample(frame))
            parts.extend(self._mono(out) for out in resampler.resample(None))
        return self._finish(parts, label)

    @staticmethod
    def _header_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        return None

    def _finish(self, parts: list[np.ndarray], label: str) -> np.ndarray:
        if not parts:
            raise MediaDecodeError(f"{label}: audio has no samples")
        out = np.concatenate(parts).astype(np.float32, copy=False)
        if out.size == 0:
            raise MediaDecodeError(f"{label}: audio has no samples")
        if out.size > self.policy.max_audio_duration_s * self.sampling.sample_rate:
            raise self._limit(out.size / self.sampling.sample_rate, label)
        return out

    def load_array(self, audio: np.ndarray | tuple[np.ndarray, int], *, label: str = DEFAULT_LABEL) -> np.ndarray:
        """An in-process waveform: a 1-D array at the target rate, or ``(array, sample_rate)``.

        A 2-D array is taken as ``(channels, samples)`` and averaged to mono.
        """
        rate = self.sampling.sample_rate
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise MediaDecodeError(f"{label}: audio tuple must be (array, sample_rate)")
            audio, rate = audio
            if not isinstance(rate, (int, np.integer)) or rate <= 0:
                raise MediaDecodeError(f"{label}: audio sample rate must be a positive integer")
        arr = np.asarray(audio)
        if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2) or arr.size == 0:
            raise MediaDecodeError(f"{label}: audio array must be a non-empty 1-D (or channels x samples) number array")
        if arr.dtype.kind in "iu":  # integer PCM: scale to [-1, 1); unsigned PCM is centred at midscale
            half = float(2 ** (arr.dtype.itemsize * 8 - 1))
            arr = (arr.astype(np.float32) - (half if arr.dtype.kind == "u" else 0.0)) / half
        arr = arr.astype(np.float32, copy=False)
        if arr.ndim == 2:
            arr = arr.mean(axis=0, dtype=np.float32)
        if arr.size / rate > self.policy.max_audio_duration_s:
            raise self._limit(arr.size / rate, label)
        if rate == self.sampling.sample_rate:
            return np.ascontiguousarray(arr)
        try:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr[None, :]), format="flt", layout="mono")
            frame.sample_rate = int(rate)
            resampler = self._resampler()
            parts = [self._mono(o) for o in resampler.resample(frame)]
            parts += [self._mono(o) for o in resampler.resample(None)]
        except Exception as exc:
            raise MediaDecodeError(f"{label}: cannot resample audio ({type(exc).__name__}: {exc})") from None
        return self._finish(parts, label)
