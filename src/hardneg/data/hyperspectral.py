r"""Hyperspectral scenes for target detection: a generator of synthetic scenes and loaders of real ones.

**Synthetic scenes** (:func:`make_scene`): the linear mixing model. ``E`` smooth endmember spectra
(sums of Gaussian absorption/reflection bumps on a baseline) are mixed by spatially smooth
abundance maps (Gaussian random fields through a softmax, so abundances are ≥ 0 and sum to 1),
scaled by a smooth illumination map, and Gaussian noise at a chosen SNR is added. Sub-pixel
targets of a known signature ``d`` are planted at isolated pixels with abundance ``a``:
``x = (1 − a) · x_background + a · d`` (before noise).

**Real scenes** (:func:`load_scene`): a cube ``(H, W, L)`` and a ground-truth target map ``(H, W)``
from ``--data-dir``: either an ENVI pair ``NAME.hdr`` + ``NAME.raw``/``.img``/``.dat`` (read with
the ``spectral`` package: ``pip install 'hardneg[hyperspectral]'``) with the truth in
``NAME_gt.npy`` or ``NAME_gt.mat``, or one ``NAME.mat`` (scipy) holding the cube and the truth
(keys such as ``data`` and ``map``, as the San Diego airport AVIRIS scene is commonly distributed).
The target signature of a real scene is the mean spectrum of its ground-truth pixels unless a
signature file ``NAME_target.npy`` is given. hardneg downloads nothing: the error names the
files it looked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardneg._optional import require

_CUBE_KEYS = ("data", "cube", "X", "image", "img", "hsi")
_TRUTH_KEYS = ("map", "gt", "groundtruth", "ground_truth", "truth", "mask")
_ENVI_DATA = (".raw", ".img", ".dat", "")


@dataclass
class Scene:
    """A hyperspectral scene: ``cube`` (H, W, L) float32, ``truth`` (H, W) bool target map,
    ``target`` (L,) the target signature; synthetic scenes also keep ``target_abundance`` (H, W),
    ``endmembers`` (E, L) and ``abundances`` (H, W, E)."""

    cube: np.ndarray
    truth: np.ndarray
    target: np.ndarray
    name: str = "scene"
    target_abundance: np.ndarray | None = None
    endmembers: np.ndarray | None = None
    abundances: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        """(H·W, L) spectra, row-major."""
        return self.cube.reshape(-1, self.cube.shape[-1])


# ---------------------------------------------------------------------------------------------
# synthetic scenes
# ---------------------------------------------------------------------------------------------


def smooth_spectra(n: int, bands: int, rng: np.random.Generator, bumps: int = 4) -> np.ndarray:
    """``n`` smooth reflectance-like spectra (n, bands) in (0, 1): a sloped baseline plus ``bumps``
    Gaussian features of random centre, width and sign."""
    w = np.linspace(0.0, 1.0, bands)
    out = np.empty((n, bands))
    for i in range(n):
        s = rng.uniform(0.2, 0.5) + rng.uniform(-0.2, 0.2) * w
        for _ in range(bumps):
            c, width, amp = rng.uniform(0, 1), rng.uniform(0.03, 0.15), rng.uniform(-0.25, 0.35)
            s = s + amp * np.exp(-0.5 * ((w - c) / width) ** 2)
        out[i] = s
    return np.clip(out, 0.02, 0.98)


def _smooth_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="wrap")
    return f / (f.std() + 1e-12)


def make_scene(
    height: int = 64,
    width: int = 64,
    bands: int = 50,
    n_endmembers: int = 5,
    abundance: float = 0.1,
    n_targets: int = 40,
    snr_db: float = 30.0,
    smoothness: float = 4.0,
    sharpness: float = 2.0,
    illumination: float = 0.1,
    seed: int = 0,
) -> Scene:
    """A synthetic scene (see the module docstring).

    Args:
        abundance: the target abundance ``a`` of every planted pixel (0 < a ≤ 1).
        n_targets: planted target pixels, at least 3 pixels apart.
        snr_db: signal-to-noise ratio of the additive Gaussian noise (mean signal power / noise power).
        smoothness: spatial scale (pixels) of the abundance and illumination maps.
        sharpness: larger values make each pixel dominated by fewer endmembers.
        illumination: relative spread of the smooth brightness map (0: none).
    """
    if not 0.0 < abundance <= 1.0:
        raise ValueError(f"abundance must lie in (0, 1], got {abundance!r}")
    if n_targets < 1 or n_targets > height * width // 9:
        raise ValueError(f"n_targets must lie in [1, {height * width // 9}] for a {height}×{width} scene")
    rng = np.random.default_rng(seed)
    spectra = smooth_spectra(n_endmembers + 1, bands, rng)
    endmembers, target = spectra[:n_endmembers], spectra[n_endmembers]
    logits = sharpness * _smooth_field((height, width, n_endmembers), (smoothness, smoothness, 0), rng)
    ab = np.exp(logits - logits.max(-1, keepdims=True))
    ab /= ab.sum(-1, keepdims=True)
    cube = ab @ endmembers
    if illumination > 0:
        cube *= (1.0 + illumination * _smooth_field((height, width), smoothness, rng))[..., None].clip(0.5, 1.5)
    # isolated target pixels: a random order of the grid, keeping points ≥ 3 pixels from those taken
    taken = np.zeros((height, width), bool)
    ta = np.zeros((height, width))
    placed = 0
    for p in rng.permutation(height * width):
        y, x = divmod(int(p), width)
        if taken[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3].any():
            continue
        taken[y, x] = True
        ta[y, x] = abundance
        placed += 1
        if placed == n_targets:
            break
    cube = (1.0 - ta[..., None]) * cube + ta[..., None] * target
    sigma = np.sqrt((cube**2).mean() / 10 ** (snr_db / 10))
    cube = cube + rng.normal(scale=sigma, size=cube.shape)
    return Scene(cube.astype(np.float32), ta > 0, target.astype(np.float32), f"synthetic_a{abundance:g}",
                 ta.astype(np.float32), endmembers.astype(np.float32), ab.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# real scenes
# ---------------------------------------------------------------------------------------------


def _missing(data_dir: Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no hyperspectral scene {name!r} in --data-dir {data_dir}: expected {name}.mat (cube and truth, keys "
        f"like 'data' and 'map') or {name}.hdr + {name}.raw (ENVI) with {name}_gt.npy / {name}_gt.mat; "
        "hardneg downloads nothing: get the scene (e.g. the San Diego airport AVIRIS scene used in target "
        "detection papers) from its distributor and place the files there"
    )


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...], ndim: int, path: Path, what: str) -> np.ndarray:
    for k in keys:
        for name, v in arrays.items():
            if name.lower() == k.lower() and v.ndim == ndim:
                return v
    cands = [k for k, v in arrays.items() if v.ndim == ndim]
    if len(cands) == 1:
        return arrays[cands[0]]
    shown = {k: v.shape for k, v in arrays.items()}
    raise ValueError(f"{path}: cannot tell which array is the {what} ({ndim}-D); arrays: {shown}")


def load_mat(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a MATLAB ``.mat`` file (scipy; v7.3 / HDF5 files are not supported)."""
    loadmat = require("scipy", "mining", feature="reading .mat scenes").io.loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .mat file: {path}")
    try:
        raw = loadmat(path)
    except (NotImplementedError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it with scipy.io.loadmat ({e}); save it as MATLAB v7 or older") from None
    return {k: np.asarray(v) for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def load_envi(header: str | Path) -> np.ndarray:
    """The (H, W, L) cube of an ENVI header and its data file (``.raw``, ``.img``, ``.dat`` or no
    extension, next to the header), read with the ``spectral`` package."""
    header = Path(header)
    if not header.is_file():
        raise FileNotFoundError(f"no such ENVI header: {header}")
    data = next((header.with_suffix(s) for s in _ENVI_DATA if header.with_suffix(s).is_file()), None)
    if data is None or data == header:
        raise FileNotFoundError(
            f"ENVI header {header} has no data file next to it (looked for {header.stem} + .raw, .img, .dat, none)"
        )
    envi = require("spectral", "hyperspectral", feature="reading ENVI scenes").envi
    return np.asarray(envi.open(str(header), str(data)).load(), dtype=np.float32)


def load_scene(data_dir: str | Path, name: str) -> Scene:
    """A real scene from ``data_dir`` (see the module docstring for the files it looks for)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a directory (it should hold {name}.mat or {name}.hdr)")
    mat, hdr = data_dir / f"{name}.mat", data_dir / f"{name}.hdr"
    if mat.is_file():
        arrays = load_mat(mat)
        cube = _pick(arrays, _CUBE_KEYS, 3, mat, "cube")
        truth = _pick(arrays, _TRUTH_KEYS, 2, mat, "ground-truth map")
    elif hdr.is_file():
        cube = load_envi(hdr)
        gt_npy, gt_mat = data_dir / f"{name}_gt.npy", data_dir / f"{name}_gt.mat"
        if gt_npy.is_file():
            truth = np.load(gt_npy)
        elif gt_mat.is_file():
            truth = _pick(load_mat(gt_mat), _TRUTH_KEYS, 2, gt_mat, "ground-truth map")
        else:
            raise FileNotFoundError(f"scene {name!r}: found {hdr} but no ground truth {gt_npy.name} or {gt_mat.name}")
    else:
        raise _missing(data_dir, name)
    cube = np.asarray(cube, dtype=np.float32)
    truth = np.asarray(truth) > 0
    if truth.shape != cube.shape[:2]:
        raise ValueError(f"scene {name!r}: ground truth {truth.shape} does not match the cube's {cube.shape[:2]}")
    if not truth.any():
        raise ValueError(f"scene {name!r}: the ground-truth map marks no target pixel")
    sig = data_dir / f"{name}_target.npy"
    target = np.load(sig).astype(np.float32).ravel() if sig.is_file() else cube[truth].mean(0)
    if target.shape != (cube.shape[2],):
        raise ValueError(f"{sig}: the target signature must have {cube.shape[2]} bands, got {target.shape}")
    return Scene(cube, truth, target, name)
