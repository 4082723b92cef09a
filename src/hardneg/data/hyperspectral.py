r"""Hyperspectral scenes for target detection: a generator of synthetic scenes and loaders of real ones.

**Synthetic scenes** (`make_scene`): by default the linear mixing model. ``E`` smooth endmember
spectra (sums of Gaussian absorption/reflection bumps on a baseline) are mixed by spatially smooth
abundance maps (Gaussian random fields through a softmax, so abundances are ≥ 0 and sum to 1),
scaled by a smooth illumination map, and Gaussian noise at a chosen SNR is added. Sub-pixel
targets of a known signature ``d`` are planted at isolated pixels with abundance ``a``:
``x = (1 − a) · x_background + a · d`` (before noise). Under this model CEM is the optimal linear
detector, so it is the setting where a learned detector has nothing to gain.

Spectral variability, each effect off at 0 and drawn from its own random stream (so the linear
scene of a seed is the same draw for draw, and each effect can be switched alone): per-pixel
illumination scaling (``scale_spread``), per-pixel endmember signatures (``endmember_variability``)
and target signatures (``target_variability``) perturbed by smooth random per-band factors,
bilinear mixing terms (``bilinear``, the Fan model at 1) and background regions with their own
dominant materials (``n_regions``, ``region_contrast``). `make_scene` documents each formula.

**Real scenes** (`load_scene`): a cube ``(H, W, L)`` and a ground-truth target map ``(H, W)``
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
from hardneg.arrays import MAX_DECOMPRESSED_BYTES, check_real, load_array_file

_CUBE_KEYS = ("data", "cube", "X", "image", "img", "hsi")
_TRUTH_KEYS = ("map", "gt", "groundtruth", "ground_truth", "truth", "mask")
_ENVI_DATA = (".raw", ".img", ".dat", "")


@dataclass
class Scene:
    """A hyperspectral scene: ``cube`` (H, W, L) float32, ``truth`` (H, W) bool target map,
    ``target`` (L,) the target signature; synthetic scenes also keep ``target_abundance`` (H, W),
    ``endmembers`` (E, L), ``abundances`` (H, W, E), ``pixel_scale`` (H, W) the per-pixel
    illumination factor and ``regions`` (H, W) the background region of each pixel."""

    cube: np.ndarray
    truth: np.ndarray
    target: np.ndarray
    name: str = "scene"
    target_abundance: np.ndarray | None = None
    endmembers: np.ndarray | None = None
    abundances: np.ndarray | None = None
    pixel_scale: np.ndarray | None = None
    regions: np.ndarray | None = None

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


def _smooth_field(shape: tuple[int, ...], sigma: float | tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter  # type: ignore[import-untyped]  # scipy ships no type stubs

    f = gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="wrap")
    return f / (f.std() + 1e-12)


#: seeds of the variability draws, one stream per effect: turning one effect on changes neither the
#: linear scene's draws nor another effect's
_STREAM = {"regions": 1, "endmembers": 2, "target": 3, "scale": 4}


def _stream(seed: int, effect: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[effect]])


def band_perturbation(shape: tuple[int, ...], bands_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random per-band perturbations: white noise of ``shape`` (last axis: bands) smoothed along
    the bands by a Gaussian of ``bands_sigma`` bands, scaled to unit standard deviation over the array."""
    from scipy.ndimage import gaussian_filter1d  # type: ignore[import-untyped]  # scipy ships no type stubs

    f = gaussian_filter1d(rng.normal(size=shape), sigma=bands_sigma, axis=-1, mode="nearest")
    return f / (f.std() + 1e-12)


def region_map(height: int, width: int, n_regions: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) region index: the Voronoi cells of ``n_regions`` uniformly random centres."""
    cy, cx = rng.uniform(0, height, n_regions), rng.uniform(0, width, n_regions)
    yy, xx = np.mgrid[0:height, 0:width]
    return np.argmin((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2, axis=-1)


def _place_targets(height: int, width: int, n_targets: int, abundance: float, rng: np.random.Generator) -> np.ndarray:
    """Target abundance map: a random order of the grid, keeping points ≥ 3 pixels from those taken."""
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
    return ta


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
    *,
    scale_spread: float = 0.0,
    endmember_variability: float = 0.0,
    target_variability: float = 0.0,
    variability_bands: float = 4.0,
    bilinear: float = 0.0,
    n_regions: int = 1,
    region_contrast: float = 0.0,
) -> Scene:
    """A synthetic scene (see the module docstring). With every variability parameter at 0 (and
    ``n_regions`` 1) it is the linear mixing model with Gaussian noise, draw for draw.

    Args:
        abundance: the target abundance ``a`` of every planted pixel (0 < a ≤ 1).
        n_targets: planted target pixels, at least 3 pixels apart.
        snr_db: signal-to-noise ratio of the additive Gaussian noise (mean signal power / noise power).
        smoothness: spatial scale (pixels) of the abundance and illumination maps.
        sharpness: larger values make each pixel dominated by fewer endmembers.
        illumination: relative spread of the smooth brightness map of the background (0: none).
        scale_spread: per-pixel illumination scaling: every pixel (targets included) is multiplied by
            ``s = exp(scale_spread · z)``, ``z ~ N(0, 1)`` independent per pixel, so the standard
            deviation of ``log s`` is ``scale_spread`` (kept in ``Scene.pixel_scale``).
        endmember_variability: each pixel has its own copy of each endmember,
            ``e_i(p) = e_i ⊙ (1 + v · f_{p,i})`` with ``f`` `band_perturbation` (unit std, smooth
            over ``variability_bands`` bands) and ``v`` this value: the relative per-band perturbation
            has standard deviation ``v``.
        target_variability: the same for the target: target pixel ``p`` holds ``d ⊙ (1 + v_t · f_p)``.
        variability_bands: smoothness (Gaussian sigma, in bands) of the signature perturbations.
        bilinear: weight ``γ`` of the bilinear mixing terms (Fan model at γ = 1): with the pixel's
            materials ``m_i`` (endmembers, then the target) and abundances ``A_i``
            (``(1 − a) · abundances`` and ``a``), ``x = Σ A_i m_i + γ Σ_{i<j} A_i A_j m_i ⊙ m_j``.
        n_regions: the scene is cut into this many Voronoi regions (``Scene.regions``) ...
        region_contrast: ... and region ``r`` adds ``b_r ~ N(0, region_contrast² I)`` to the abundance
            logits of its pixels: each region has its own dominant materials.
    """
    if not 0.0 < abundance <= 1.0:
        raise ValueError(f"abundance must lie in (0, 1], got {abundance!r}")
    if n_targets < 1 or n_targets > height * width // 9:
        raise ValueError(f"n_targets must lie in [1, {height * width // 9}] for a {height}×{width} scene")
    for name, v in (("scale_spread", scale_spread), ("endmember_variability", endmember_variability),
                    ("target_variability", target_variability), ("bilinear", bilinear),
                    ("region_contrast", region_contrast)):
        if not v >= 0.0:
            raise ValueError(f"{name} must be ≥ 0, got {v!r}")
    if n_regions < 1 or variability_bands <= 0:
        raise ValueError(f"n_regions must be ≥ 1 and variability_bands > 0, got {n_regions!r}, {variability_bands!r}")
    rng = np.random.default_rng(seed)
    spectra = smooth_spectra(n_endmembers + 1, bands, rng)
    endmembers, target = spectra[:n_endmembers], spectra[n_endmembers]
    logits = sharpness * _smooth_field((height, width, n_endmembers), (smoothness, smoothness, 0), rng)
    regions = np.zeros((height, width), np.int64)
    if n_regions > 1:
        r_rng = _stream(seed, "regions")
        regions = region_map(height, width, n_regions, r_rng)
        logits = logits + region_contrast * r_rng.normal(size=(n_regions, n_endmembers))[regions]
    ab = np.exp(logits - logits.max(-1, keepdims=True))
    ab /= ab.sum(-1, keepdims=True)
    if endmember_variability > 0:
        pert = band_perturbation((height, width, n_endmembers, bands), variability_bands, _stream(seed, "endmembers"))
        materials = endmembers * (1.0 + endmember_variability * pert)  # (H, W, E, L)
        cube = np.einsum("hwe,hwel->hwl", ab, materials)
    else:
        materials = np.broadcast_to(endmembers, (height, width, n_endmembers, bands))
        cube = ab @ endmembers
    if illumination > 0:
        cube *= (1.0 + illumination * _smooth_field((height, width), smoothness, rng))[..., None].clip(0.5, 1.5)
    ta = _place_targets(height, width, n_targets, abundance, rng)
    tsig = np.broadcast_to(target, (height, width, bands)).copy()
    if target_variability > 0:
        t = ta > 0
        tsig[t] = target * (1.0 + target_variability * band_perturbation((int(t.sum()), bands), variability_bands,
                                                                         _stream(seed, "target")))
    cube = (1.0 - ta[..., None]) * cube + ta[..., None] * tsig
    if bilinear > 0:
        cube = cube + bilinear * _bilinear_terms(ab, ta, materials, tsig)
    scale = np.ones((height, width))
    if scale_spread > 0:
        scale = np.exp(scale_spread * _stream(seed, "scale").normal(size=(height, width)))
        cube = cube * scale[..., None]
    sigma = np.sqrt((cube**2).mean() / 10 ** (snr_db / 10))
    cube = cube + rng.normal(scale=sigma, size=cube.shape)
    return Scene(cube.astype(np.float32), ta > 0, target.astype(np.float32), f"synthetic_a{abundance:g}",
                 ta.astype(np.float32), endmembers.astype(np.float32), ab.astype(np.float32),
                 scale.astype(np.float32), regions)


def _bilinear_terms(ab: np.ndarray, ta: np.ndarray, materials: np.ndarray, tsig: np.ndarray) -> np.ndarray:
    """``Σ_{i<j} A_i A_j m_i ⊙ m_j`` over the endmembers and the target, per pixel, as
    ``½ ((Σ A_i m_i)² − Σ A_i² m_i²)`` (the square of a sum less its diagonal)."""
    A = np.concatenate([(1.0 - ta)[..., None] * ab, ta[..., None]], axis=-1)  # (H, W, E + 1)
    M = np.concatenate([materials, tsig[..., None, :]], axis=-2)  # (H, W, E + 1, L)
    lin = np.einsum("hwe,hwel->hwl", A, M)
    diag = np.einsum("hwe,hwel->hwl", A**2, M**2)
    return 0.5 * (lin**2 - diag)


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


#: MATLAB classes load_mat reads, with their bytes per element; cells, structs, text and sparse
#: matrices are skipped unread (a scene is numeric arrays)
_MAT_CLASSES = {"double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4,
                "uint32": 4, "int64": 8, "uint64": 8, "logical": 1}
#: ENVI ``data type`` codes hardneg reads (complex types 6 and 9 are refused)
_ENVI_TYPES = {1: np.uint8, 2: np.int16, 3: np.int32, 4: np.float32, 5: np.float64, 12: np.uint16,
               13: np.uint32, 14: np.int64, 15: np.uint64}
#: ENVI headers are text of a few kilobytes (a long wavelength list included)
MAX_ENVI_HEADER_BYTES = 4 * 2**20


def load_mat(path: str | Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The numeric arrays of a MATLAB ``.mat`` file (scipy; v7.3 / HDF5 files are not supported).

    The sizes the file declares are checked against ``max_bytes`` (default
    `hardneg.arrays.MAX_DECOMPRESSED_BYTES`) before anything is decompressed; a damaged or
    truncated file is one ``ValueError`` naming it."""
    sio = require("scipy", "mining", feature="reading .mat scenes").io
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .mat file: {path}")
    limit = MAX_DECOMPRESSED_BYTES if max_bytes is None else max_bytes
    try:
        listed = sio.whosmat(path)
        numeric = [(n, shape, _MAT_CLASSES[c]) for n, shape, c in listed if c in _MAT_CLASSES]
        declared = sum(int(np.prod(shape, dtype=np.float64)) * size for _, shape, size in numeric)
        if declared > limit:
            big = max(numeric, key=lambda v: int(np.prod(v[1], dtype=np.float64)) * v[2])
            raise _TooLargeError(f"{path}: its arrays declare {declared:,} bytes (largest {big[0]!r} of shape "
                            f"{tuple(big[1])}), over the limit of {limit:,} bytes; refused before decompressing")
        raw = sio.loadmat(path, variable_names=[n for n, _, _ in numeric]) if numeric else {}
    except _TooLargeError as e:
        raise ValueError(str(e)) from None
    except NotImplementedError as e:
        raise ValueError(f"{path}: cannot read it with scipy.io.loadmat ({e}); save it as MATLAB v7 or older") from None
    except Exception as e:  # noqa: BLE001 - scipy's reader raises many kinds on damaged bytes; all mean one thing
        raise ValueError(f"{path}: not a readable .mat file, damaged or truncated ({type(e).__name__}: "
                         f"{str(e).strip()[:200]})") from None
    return {k: np.asarray(v) for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


class _TooLargeError(Exception):
    """A .mat file declaring more bytes than the limit (kept apart from scipy's own errors)."""


def _envi_layout(header: Path, data: Path) -> None:
    """Check an ENVI header before the data is read: size, the ``ENVI`` magic, the mandatory fields,
    a supported data type, and a data file holding every byte the header declares."""
    if header.stat().st_size > MAX_ENVI_HEADER_BYTES:
        raise ValueError(f"{header}: {header.stat().st_size:,} bytes, too large for an ENVI header "
                         f"(at most {MAX_ENVI_HEADER_BYTES:,})")
    with open(header, "rb") as f:
        first = f.readline(64)
    if not first.startswith(b"ENVI"):
        raise ValueError(f"{header}: not an ENVI header (its first line must be 'ENVI')")
    envi = require("spectral", "hyperspectral", feature="reading ENVI scenes").envi
    try:
        h = envi.read_envi_header(str(header))
    except Exception as e:  # noqa: BLE001 - spectral's parser raises its own kinds and plain ones on bad text
        raise ValueError(f"{header}: not a readable ENVI header ({type(e).__name__}: {str(e).strip()[:200]})") from None
    fields = {}
    for key in ("samples", "lines", "bands", "data type"):
        try:
            fields[key] = int(str(h[key]).strip())
        except (KeyError, ValueError):
            raise ValueError(f"{header}: the ENVI field {key!r} is missing or not an integer") from None
        if fields[key] < 1:
            raise ValueError(f"{header}: the ENVI field {key!r} must be positive, got {fields[key]}")
    if fields["data type"] not in _ENVI_TYPES:
        raise ValueError(f"{header}: ENVI data type {fields['data type']} is not supported (supported: "
                         f"{sorted(_ENVI_TYPES)}; complex data is not a reflectance cube)")
    try:
        offset = int(str(h.get("header offset", 0)).strip())
    except ValueError:
        raise ValueError(f"{header}: the ENVI field 'header offset' is not an integer") from None
    item = np.dtype(_ENVI_TYPES[fields["data type"]]).itemsize
    declared = fields["samples"] * fields["lines"] * fields["bands"] * item
    held = data.stat().st_size - max(offset, 0)
    if held < declared:
        raise ValueError(f"{data}: the header {header.name} declares {fields['lines']}×{fields['samples']}×"
                         f"{fields['bands']} values ({declared:,} bytes) but the file holds {held:,} "
                         "(truncated or the wrong data file)")


def load_envi(header: str | Path) -> np.ndarray:
    """The (H, W, L) cube of an ENVI header and its data file (``.raw``, ``.img``, ``.dat`` or no
    extension, next to the header), read with the ``spectral`` package after `_envi_layout`'s
    checks; a damaged pair is one ``ValueError`` naming the file."""
    header = Path(header)
    if not header.is_file():
        raise FileNotFoundError(f"no such ENVI header: {header}")
    data = next((header.with_suffix(s) for s in _ENVI_DATA if header.with_suffix(s).is_file()), None)
    if data is None or data == header:
        raise FileNotFoundError(
            f"ENVI header {header} has no data file next to it (looked for {header.stem} + .raw, .img, .dat, none)"
        )
    _envi_layout(header, data)
    envi = require("spectral", "hyperspectral", feature="reading ENVI scenes").envi
    try:
        return np.asarray(envi.open(str(header), str(data)).load(), dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - spectral raises many kinds on damaged files; all mean one thing
        raise ValueError(f"{data}: cannot read the ENVI cube ({type(e).__name__}: {str(e).strip()[:200]})") from None


def load_scene(data_dir: str | Path, name: str) -> Scene:
    """A real scene from ``data_dir`` (see the module docstring for the files it looks for)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a directory (it should hold {name}.mat or {name}.hdr)")
    mat, hdr = data_dir / f"{name}.mat", data_dir / f"{name}.hdr"
    if mat.is_file():
        arrays = load_mat(mat)
        cube, cube_file = _pick(arrays, _CUBE_KEYS, 3, mat, "cube"), mat
        truth = check_real(_pick(arrays, _TRUTH_KEYS, 2, mat, "ground-truth map"), f"{mat} (ground truth)")
    elif hdr.is_file():
        cube, cube_file = load_envi(hdr), hdr
        gt_npy, gt_mat = data_dir / f"{name}_gt.npy", data_dir / f"{name}_gt.mat"
        if gt_npy.is_file():
            truth = check_real(load_array_file(gt_npy, "ground truth"), f"{gt_npy}")
        elif gt_mat.is_file():
            truth = check_real(_pick(load_mat(gt_mat), _TRUTH_KEYS, 2, gt_mat, "ground-truth map"), f"{gt_mat}")
        else:
            raise FileNotFoundError(f"scene {name!r}: found {hdr} but no ground truth {gt_npy.name} or {gt_mat.name}")
    else:
        raise _missing(data_dir, name)
    check_real(cube, f"{cube_file} (cube)")
    with np.errstate(over="ignore"):  # float64 values beyond float32's range become inf: refused next
        cube = check_real(np.asarray(cube, dtype=np.float32), f"{cube_file} (cube as float32)")
    truth = np.asarray(truth) > 0
    if truth.shape != cube.shape[:2]:
        raise ValueError(f"scene {name!r}: ground truth {truth.shape} does not match the cube's {cube.shape[:2]}")
    if not truth.any():
        raise ValueError(f"scene {name!r}: the ground-truth map marks no target pixel")
    sig = data_dir / f"{name}_target.npy"
    if sig.is_file():
        target = check_real(load_array_file(sig, "target signature"), str(sig)).astype(np.float32).ravel()
    else:
        target = cube[truth].mean(0)
    if target.shape != (cube.shape[2],):
        raise ValueError(f"{sig}: the target signature must have {cube.shape[2]} bands, got {target.shape}")
    return Scene(cube, truth, target, name)
