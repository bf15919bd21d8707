"""MFCC features as the official SyncNet evaluation computes them (python_speech_features.mfcc).

syncnet_python reads 16 kHz int16 wav with scipy and calls `python_speech_features.mfcc(audio, 16000)`
with its defaults; this is the same computation in numpy, so that package is not needed:
pre-emphasis 0.97 -> frames of 400 samples every 160 (25 ms / 10 ms, zero-padded at the end, no
window function) -> power spectrum |rfft(512)|^2 / 512 -> 26 triangular mel filters (0 Hz..8 kHz,
bin edges floor(513 * f / sr)) -> log -> DCT-II (ortho), first 13 -> sinusoidal lifter 22 ->
coefficient 0 replaced by the log frame energy. 100 feature frames per second, so video frame k
(25 fps) maps to columns 4k .. 4k+20 (a 0.2 s window).
"""
import math

import numpy as np
from scipy.fftpack import dct

SAMPLE_RATE = 16000
FRAME_LENGTH = 400      # 0.025 s
FRAME_STEP = 160        # 0.010 s
N_FFT = 512
N_FILTERS = 26
N_CEPSTRA = 13
CEP_LIFTER = 22
PREEMPHASIS = 0.97
INT16_SCALE = 32768.0   # the official code feeds int16 sample values, not [-1, 1] floats


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_filters=N_FILTERS, n_fft=N_FFT, sr=SAMPLE_RATE, low_hz=0.0, high_hz=None):
    """(n_filters, n_fft//2+1) triangular filters on the mel scale (python_speech_features layout)."""
    high_hz = high_hz or sr / 2
    mel_points = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), n_filters + 2)
    bins = np.floor((n_fft + 1) * _mel_to_hz(mel_points) / sr)
    bank = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(mid, hi):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank


def _frames(signal):
    n = len(signal)
    count = 1 if n <= FRAME_LENGTH else 1 + int(math.ceil((n - FRAME_LENGTH) / FRAME_STEP))
    padded = np.concatenate([signal, np.zeros((count - 1) * FRAME_STEP + FRAME_LENGTH - n)])
    index = np.arange(FRAME_LENGTH)[None, :] + FRAME_STEP * np.arange(count)[:, None]
    return padded[index]


def syncnet_mfcc(wav):
    """13 MFCCs of 16 kHz mono float audio in [-1, 1]: float32 (13, T) at 100 frames/s."""
    signal = np.asarray(wav, dtype=np.float64) * INT16_SCALE
    if signal.ndim != 1 or signal.size == 0:
        raise ValueError(f"syncnet_mfcc expects non-empty mono audio, got shape {signal.shape}")
    signal = np.append(signal[0], signal[1:] - PREEMPHASIS * signal[:-1])
    power = np.square(np.abs(np.fft.rfft(_frames(signal), N_FFT))) / N_FFT
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    features = power @ mel_filterbank().T
    features = np.log(np.where(features == 0, eps, features))
    cepstra = dct(features, type=2, axis=1, norm="ortho")[:, :N_CEPSTRA]
    lift = 1 + (CEP_LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEPSTRA) / CEP_LIFTER)
    cepstra = cepstra * lift
    cepstra[:, 0] = np.log(energy)
    return cepstra.T.astype(np.float32)
