"""AudioMediaIO: resampling to 16 kHz mono float32, duration caps (header and decode), errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ray_mm.config import AudioSampling, MediaPolicy
from ray_mm.errors import MediaDecodeError, MediaLimitError
from ray_mm.media.audio import AudioMediaIO
from tests.unit.media_factory import make_audio, make_jpeg, make_video

L = "audio 0 of request r3"


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 1), (8000, 1), (16000, 2)])
def test_resampled_to_16k_mono_exact_length(fmt: str, rate: int, channels: int) -> None:
    out = AudioMediaIO(MediaPolicy()).load_bytes(make_audio(1.5, sample_rate=rate, channels=channels, fmt=fmt), label=L)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - 24000) <= 1
    assert 0.45 < np.abs(out[100:-100]).max() < 0.55  # channel mean keeps the 0.5 amplitude
    # Still a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 440) < 2


@pytest.mark.parametrize("fmt", ["aac", "m4a"])
def test_compressed_audio(fmt: str) -> None:
    out = AudioMediaIO(MediaPolicy()).load_bytes(make_audio(2.0, fmt=fmt), label=L)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - 32000) < 1200  # AAC adds up to one frame of encoder priming


def test_target_rate_from_config() -> None:
    out = AudioMediaIO(MediaPolicy(), AudioSampling(sample_rate=8000)).load_bytes(make_audio(1.0), label=L)
    assert abs(out.size - 8000) <= 1


def test_duration_cap_from_header() -> None:
    io_ = AudioMediaIO(MediaPolicy(max_audio_duration_s=1.0))
    io_.load_bytes(make_audio(0.9), label=L)
    with pytest.raises(MediaLimitError) as ei:
        io_.load_bytes(make_audio(3.0), label=L)
    assert ei.value.status == 413 and L in ei.value.message


def _lying_wav(seconds: float, claimed_seconds: float, rate: int = 16000) -> bytes:
    """A mono s16 WAV whose RIFF/data sizes claim ``claimed_seconds`` but that holds ``seconds``."""
    pcm = (np.sin(np.arange(int(seconds * rate)) / 5) * 10000).astype("<i2").tobytes()
    claimed = int(claimed_seconds * rate) * 2
    header = b"RIFF" + struct.pack("<I", 36 + claimed) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", claimed)
    return header + pcm


def test_wav_with_short_claimed_size_yields_only_the_claimed_audio() -> None:
    # FFmpeg's wav demuxer trusts the data chunk size, so the extra 5.5 s never reaches us.
    io_ = AudioMediaIO(MediaPolicy(max_audio_duration_s=2.0))
    out = io_.load_bytes(_lying_wav(seconds=6.0, claimed_seconds=0.5), label=L)
    assert out.size <= 2.0 * 16000


def test_duration_cap_enforced_while_decoding_when_header_lies(monkeypatch: pytest.MonkeyPatch) -> None:
    io_ = AudioMediaIO(MediaPolicy(max_audio_duration_s=2.0))
    # The header claims 0.5 s (or nothing at all); the stream really holds 6 s.
    for claimed in (0.5, None):
        monkeypatch.setattr(AudioMediaIO, "_header_duration", staticmethod(lambda c, s, v=claimed: v))
        with pytest.raises(MediaLimitError) as ei:
            io_.load_bytes(make_audio(6.0, sample_rate=16000, channels=1), label=L)
        assert ei.value.status == 413


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 500, b"this is text, not sound" * 20, make_jpeg(), make_video(duration_s=1)],
    ids=["empty", "zeros", "text", "jpeg", "video-only"],
)
def test_bad_audio_is_400(data: bytes) -> None:
    with pytest.raises(MediaDecodeError) as ei:
        AudioMediaIO(MediaPolicy()).load_bytes(data, label=L)
    assert ei.value.status == 400 and L in ei.value.message


def test_format_allow_list() -> None:
    with pytest.raises(MediaDecodeError):
        AudioMediaIO(MediaPolicy(audio_formats=["flac"])).load_bytes(make_audio(0.5, fmt="wav"), label=L)


def test_in_process_arrays() -> None:
    io_ = AudioMediaIO(MediaPolicy(max_audio_duration_s=5))
    wave = np.sin(np.arange(16000) / 10).astype(np.float64)
    out = io_.load_array(wave, label=L)
    assert out.dtype == np.float32 and out.shape == (16000,)
    out = io_.load_array((np.zeros(44100, np.float32), 44100), label=L)
    assert abs(out.size - 16000) <= 1
    assert io_.load_array(np.zeros((2, 1600), np.float32), label=L).shape == (1600,)
    with pytest.raises(MediaLimitError):
        io_.load_array(np.zeros(16000 * 6, np.float32), label=L)
    with pytest.raises(MediaDecodeError):
        io_.load_array(np.zeros((2, 2, 2), np.float32), label=L)
