"""filigree.sync: key-derived sync templates, the periodic layout, and blind re-synchronisation.

The read tests mark generated photo-like textures (smooth random texture plus fine grain) with the
periodic layout of a tile that carries a sync template, edit them with Pillow, and check that the
top hypothesis recovers what the edit did: the template, the orientation and the phase, and a
tile that correlates with the one embedded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from filigree.sync import (
    SyncHypothesis,
    align,
    dihedral,
    fold,
    locate_template,
    period_for,
    sync_template,
    sync_templates,
    synchronise,
    tile_pattern,
    undo_dihedral,
    whiten,
)
from filigree.sync import analysis_luma, comb_lattices, refine_lattice, template_bank
from filigree.sync.reader import register
from filigree.sync.templates import radial_band

KEY = b"test-key"
TEMPLATE = 5
STRENGTH = 3.0  # grey levels RMS: visible on flat areas, modest on texture
TEMPLATE_WEIGHT = 0.35


@pytest.fixture(scope="module")
def templates() -> np.ndarray:
    return sync_templates(KEY)


def texture(seed: int, height: int = 384, width: int = 512) -> np.ndarray:
    """float32 [H, W]: smooth random texture (std ~30 around 128) plus 2 grey levels of grain."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    envelope = 1.0 / (np.hypot(fy, fx) + 0.01) ** 1.5
    spectrum = envelope * (rng.standard_normal(envelope.shape) + 1j * rng.standard_normal(envelope.shape))
    smooth = np.fft.irfft2(spectrum, s=(height, width))
    smooth *= 30.0 / smooth.std()
    return (128.0 + smooth + 2.0 * rng.standard_normal((height, width))).astype(np.float32)


def band_noise(seed: int, n: int = 64) -> np.ndarray:
    """float32 [n, n]: unit-RMS noise in the template band (stands in for the payload part)."""
    rng = np.random.default_rng(seed)
    band = radial_band(n)
    spectrum = (rng.standard_normal(band.shape) + 1j * rng.standard_normal(band.shape)) * band
    noise = np.fft.irfft2(spectrum, s=(n, n))
    return (noise / noise.std()).astype(np.float32)


def embedded_tile(templates: np.ndarray) -> np.ndarray:
    return (np.sqrt(1 - TEMPLATE_WEIGHT**2) * band_noise(7) + TEMPLATE_WEIGHT * templates[TEMPLATE]).astype(
        np.float32)


def marked_image(templates: np.ndarray, seed: int = 1) -> tuple[Image.Image, int]:
    base = texture(seed)
    height, width = base.shape
    period = period_for(height, width)
    pattern = tile_pattern(embedded_tile(templates), height, width, period)
    marked = np.clip(np.rint(base + STRENGTH * pattern / pattern.std()), 0, 255).astype(np.uint8)
    return Image.fromarray(marked).convert("RGB"), period


def crop_odd(image):
    x0, y0 = 37, 23
    return image.crop((x0, y0, x0 + 401, y0 + 299)), np.eye(2), np.array([-y0, -x0], float)


def rotate_2(image):
    angle = 2.0
    out = image.rotate(angle, resample=Image.Resampling.BICUBIC)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    m = np.array([[c, -s], [s, c]])
    centre = np.array([image.height / 2, image.width / 2]) - 0.5
    return out, m, centre - m @ centre


def mirror(image):
    return (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), np.diag([1.0, -1.0]),
            np.array([0.0, image.width - 1]))


def turn_90(image):
    return (image.transpose(Image.Transpose.ROTATE_90), np.array([[0.0, -1.0], [1.0, 0.0]]),
            np.array([image.width - 1, 0.0]))


def rescale_07(image):
    size = (round(image.width * 0.7), round(image.height * 0.7))
    sy, sx = size[1] / image.height, size[0] / image.width
    return (image.resize(size, Image.Resampling.BICUBIC), np.diag([sy, sx]),
            np.array([0.5 * sy - 0.5, 0.5 * sx - 0.5]))


EDITS = {"crop at odd offset": crop_odd, "rotation 2°": rotate_2, "mirror": mirror, "turn 90°": turn_90,
         "rescale 0.7": rescale_07}


def phase_error(hypothesis: SyncHypothesis, matrix, offset, period: int) -> np.ndarray:
    """Cyclic distance (tile samples) of the hypothesis's origin from the tile's true (0, 0)."""
    n = hypothesis.tile.shape[0]
    phase = (n / period) * np.linalg.solve(matrix, hypothesis.origin - offset)
    return np.abs((phase + n / 2) % n - n / 2)


# The aligned tile is a fold of the whitened image, so it is compared with the embedded tile after
# the same prediction-error filter. For independent band-limited 64 x 64 tiles the correlation has
# a spread of about 0.025 (about 1800 in-band coefficients); 0.5 is 20 such spreads, and what the
# reads below reach with this texture and strength (0.6-0.9) leaves margin for the edits' blur.
MIN_TILE_CORRELATION = 0.5


def whitened_tile(tile: np.ndarray) -> np.ndarray:
    neighbours = sum(np.roll(tile, s, axis) for s in (1, -1) for axis in (0, 1))
    return tile - 0.25 * neighbours


@pytest.mark.parametrize("edit", list(EDITS))
def test_synchronise_recovers_the_geometry_after_an_edit(templates, edit):
    image, period = marked_image(templates)
    edited, matrix, offset = EDITS[edit](image)
    hypotheses = synchronise(np.asarray(edited), templates)
    assert hypotheses, "no hypothesis"
    best = hypotheses[0]
    assert best.template == TEMPLATE
    assert best.z > 8.0
    true_basis = (period * matrix).T
    error = np.linalg.norm(best.basis - true_basis, axis=1) / np.linalg.norm(true_basis, axis=1)
    assert np.all(error < 0.01), (best.basis, true_basis)
    assert np.all(phase_error(best, matrix, offset, period) <= 1.0)
    assert best.tile.shape == (64, 64) and best.tile.dtype == np.float32
    rho = np.corrcoef(best.tile.ravel(), whitened_tile(embedded_tile(templates)).ravel())[0, 1]
    assert rho > MIN_TILE_CORRELATION, rho


def test_unedited_read_has_the_tile_upright_at_the_origin(templates):
    image, period = marked_image(templates, seed=2)
    hypotheses = synchronise(np.asarray(image), templates)
    best = hypotheses[0]
    assert best.template == TEMPLATE
    np.testing.assert_allclose(best.basis, period * np.eye(2), rtol=0.005, atol=0.3)
    assert np.all(phase_error(best, np.eye(2), np.zeros(2), period) <= 0.5)
    assert best.lattice.shape == (2, 2)
    assert max(h.lattice_score for h in hypotheses) > 8.0  # the spectral comb found it too


# Under no mark the winning z is the maximum over lattices x 16 templates x 8 transforms x 4096
# shifts of near-Gaussian scores, about 4.5-5.5; marked reads above score 10-20.
MAX_NULL_Z = 6.5


@pytest.mark.parametrize("edit", ["none", *EDITS])
def test_unmarked_images_score_low(templates, edit):
    image = Image.fromarray(np.clip(np.rint(texture(3)), 0, 255).astype(np.uint8)).convert("RGB")
    edited = image if edit == "none" else EDITS[edit](image)[0]
    hypotheses = synchronise(np.asarray(edited), templates)
    assert all(h.z < MAX_NULL_Z for h in hypotheses), [h.z for h in hypotheses]


def test_grey_and_float_inputs_read_like_rgb(templates):
    image, _ = marked_image(templates, seed=4)
    grey = np.asarray(image.convert("L"))
    for pixels in (grey, grey.astype(np.float32), image):
        best = synchronise(pixels, templates)[0]
        assert best.template == TEMPLATE and best.z > 8.0


@pytest.mark.parametrize("shape", [(1, 500, 3), (500, 1), (20, 20, 3), (40, 900, 3), (300, 300, 3)])
def test_unusable_images_give_no_hypotheses(templates, shape):
    flat = np.full(shape, 128, np.uint8)  # 1-pixel strips, tiny, thin, and constant images
    assert synchronise(flat, templates) == []


def test_malformed_pixels_raise(templates):
    with pytest.raises(ValueError):
        synchronise(np.zeros((50, 50, 2), np.uint8), templates)
    with pytest.raises(ValueError):
        synchronise(np.zeros((0, 10), np.uint8), templates)


def test_period_for():
    assert period_for(1080, 1920) == 135
    assert period_for(384, 512) == 64
    assert period_for(1, 1) == 64
    assert period_for(4000, 6000) == 384
    assert isinstance(period_for(1000, 1000), int)
    with pytest.raises(ValueError):
        period_for(0, 10)


def test_sync_template_is_key_derived_and_band_limited():
    a = sync_template(KEY, 3)
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, sync_template(KEY, 3))
    assert abs(float(a.mean())) < 1e-5 and abs(float(np.sqrt(np.mean(a**2))) - 1) < 1e-5
    for other in (sync_template(b"other-key", 3), sync_template(KEY, 4)):
        assert abs(np.corrcoef(a.ravel(), other.ravel())[0, 1]) < 0.1
    spectrum = np.abs(np.fft.rfft2(a))
    assert spectrum[~radial_band(64)].max() < 1e-3 * spectrum.max()
    assert sync_template(KEY, 0, size=32).shape == (32, 32)
    assert sync_templates(KEY, count=4).shape == (4, 64, 64)
    with pytest.raises(ValueError):
        sync_template(KEY, -1)


def test_tile_pattern_is_the_periodic_bilinear_layout():
    tile = band_noise(3)
    np.testing.assert_allclose(tile_pattern(tile, 130, 200, 64), np.tile(tile, (3, 4))[:130, :200], atol=1e-6)
    pattern = tile_pattern(tile, 300, 260, 128)
    assert pattern.shape == (300, 260) and pattern.dtype == np.float32
    np.testing.assert_allclose(pattern[::2, ::2][:64, :64], tile, atol=1e-6)
    np.testing.assert_allclose(pattern[1, 0], 0.5 * (tile[0, 0] + tile[1, 0]), atol=1e-6)
    odd = tile_pattern(tile, 400, 400, 97)
    np.testing.assert_allclose(odd[97:194, 5:300], odd[:97, 5:300], atol=1e-6)


@pytest.mark.parametrize("d", range(8))
def test_align_undoes_dihedral_and_cyclic_shift(templates, d):
    tile = templates[2]
    np.testing.assert_array_equal(undo_dihedral(dihedral(tile, d), d), tile)
    moved = np.roll(dihedral(tile, d), (13, 50), axis=(0, 1))
    np.testing.assert_allclose(align(moved, d, (13.0, 50.0)), tile, atol=1e-4)
    match = locate_template(moved, templates)
    assert (match.template, match.dihedral) == (2, d)
    np.testing.assert_allclose(match.shift, (13, 50), atol=0.05)


def test_fold_averages_over_the_lattice():
    tile = band_noise(9)
    pattern = tile_pattern(tile, 256, 320, 64)
    np.testing.assert_allclose(fold(pattern, 64 * np.eye(2)), tile, atol=1e-5)
    with pytest.raises(ValueError):
        fold(pattern, np.zeros((2, 2)))


def test_whiten_zeroes_flat_margins():
    y = np.zeros((100, 120), np.float32)
    y[30:90, 30:110] = texture(5, 60, 80)
    w = whiten(y)
    assert np.isfinite(w).all() and w.dtype == np.float32
    assert np.all(w[:20] == 0) and np.all(w[:, :20] == 0)
    assert w[45:75, 45:95].std() > 0.3


# -- the spectral comb and the lattice refinement -----------------------------------------------
def _lattice_of(basis: np.ndarray) -> tuple[float, float]:
    """(period, angle in degrees folded to [-45, 45)) of a square lattice's first vector."""
    v = np.asarray(basis)[0]
    angle = (np.degrees(np.arctan2(v[1], v[0])) + 45.0) % 90.0 - 45.0
    return float(np.hypot(*v)), float(angle)


@pytest.mark.parametrize("edit", ["crop at odd offset", "rotation 2°", "rescale 0.7", "turn 90°"])
def test_comb_finds_the_period_and_angle(templates, edit):
    image, period = marked_image(templates)
    edited, matrix, _ = EDITS[edit](image)
    w = whiten(analysis_luma(np.asarray(edited))[0])
    found = comb_lattices(w, (1.0, 1.0), 3)
    assert found and found[0].score > 8.0
    true_period, true_angle = _lattice_of((period * matrix).T)
    got_period, got_angle = _lattice_of(found[0].basis)
    assert abs(got_period / true_period - 1) < 0.004, (got_period, true_period)
    assert abs(got_angle - true_angle) < 0.15 or abs(got_angle + true_angle) < 0.15, (got_angle, true_angle)


def test_the_upright_search_finds_a_faint_upright_lattice_the_log_polar_grid_misses(templates):
    """A faint mark (2 grey levels RMS) on a texture, cropped at an odd offset: the log-polar
    candidates hold nothing within 1 % of its period, the upright search's best peak is it (to
    0.1 % with the interpolated power, `interpolated_period`; well above `MIN_SCORE`), and so
    `comb_lattices` reports it upright."""
    import importlib

    comb = importlib.import_module("filigree.sync.comb")
    base = texture(3, 600, 800)
    pattern = tile_pattern(embedded_tile(templates), 600, 800, 97)
    image = np.clip(np.rint(base + 2.0 * pattern / pattern.std()), 0, 255).astype(np.uint8)
    w = whiten(analysis_luma(image[41:461, 77:637])[0])
    norm = comb.normalised_power(w)
    zmap = comb.comb_map(norm, 1)
    lo, hi = comb.MIN_PERIOD, min(w.shape) / 2.0
    log_polar = comb._log_polar_candidates(zmap, comb.comb_map(norm, 2), lo, hi, comb.band_points(*comb.TEMPLATE_BAND))
    assert not any(abs(period / 97 - 1) < 0.01 for period, _, _ in log_polar), log_polar
    period, angle, score = comb.upright_candidates(zmap, norm, lo, hi, 3)[0]
    assert abs(period / 97 - 1) < 0.001 and angle == 0.0 and score > comb.MIN_SCORE + 2, (period, score)
    got_period, got_angle = _lattice_of(comb_lattices(w, (1.0, 1.0), 3)[0].basis)
    assert abs(got_period / 97 - 1) < 0.001 and got_angle == 0.0


@pytest.mark.parametrize("edit", ["crop at odd offset", "rotation 2°"])
def test_synchronise_gives_at_most_max_lattices_plus_two_hypotheses(templates, edit, monkeypatch):
    """The contract prices a read by max_lattices + 2 decodes: the unedited lattice, the comb's
    lattices and the presence-weighted fold of the best of them (skipped for a mark strong enough
    to fill the image, `PRESENCE_MAX_Z`)."""
    import filigree.sync.reader as reader

    image, period = marked_image(templates)
    edited, _, _ = EDITS[edit](image)
    for lattices in (1, 3):
        for layout_period in (period, None):
            hypotheses = synchronise(edited, templates, lattices, layout_period=layout_period)
            assert 1 <= len(hypotheses) <= lattices + 2
            assert [h.z for h in hypotheses] == sorted((h.z for h in hypotheses), reverse=True)
    assert len(synchronise(edited, templates, 1)) == 1  # this mark's z is far above PRESENCE_MAX_Z
    monkeypatch.setattr(reader, "PRESENCE_MAX_Z", np.inf)
    assert len(synchronise(edited, templates, 1)) == 2  # the comb's lattice and its presence-weighted fold


def test_upright_periods_move_no_line_by_more_than_one_bin():
    """Between two steps of the upright grid the band's highest line (24 cycles per period)
    moves by at most one frequency bin (the comb map's reach), from the shortest period to the
    longest."""
    from filigree.sync.comb import upright_periods

    periods = upright_periods(28.0, 400.0, 1024)
    assert periods[0] == 28.0 and periods[-1] == 400.0
    line_bins = 24 * 1024 / periods
    assert np.all(-np.diff(line_bins) <= 1.0 + 1e-9)
    assert len(periods) < 1000


def test_fold_bins_are_read_only_views():
    """The bins are cached (a read folds its best lattice several times): a caller cannot make
    the array it gets writeable and so corrupt the cache."""
    from filigree.sync.fold import fold_bins

    bins = fold_bins((100, 120), np.diag([37.5, 37.5]), 64)
    with pytest.raises(ValueError):
        bins.flags.writeable = True
    assert np.array_equal(bins, fold_bins((100, 120), np.diag([37.5, 37.5]), 64))


def test_fold_refuses_weights_of_another_shape():
    with pytest.raises(ValueError, match="weights"):
        fold(np.zeros((200, 210)), np.diag([40.0, 40.0]), 64, weights=np.ones((210, 200)))


def test_upright_periods_need_a_positive_shortest_period():
    from filigree.sync.comb import upright_periods

    with pytest.raises(ValueError):
        upright_periods(0.0, 10.0, 100)


@pytest.mark.parametrize("name, factor", [("opencv_aloeL.jpg", 1), ("opencv_fruits.jpg", 3)])
def test_the_presence_fold_of_an_unmarked_photo_keeps_a_null_z(templates, name, factor, monkeypatch):
    """Weights drawn from the template make the refold correlate with it even where there is no
    mark; the presence hypothesis carries the z of the match it was drawn from, so on unmarked
    photos (refolded whatever their z) no hypothesis stands out."""
    import filigree.sync.reader as reader
    from filigree.resources import bundled_samples_dir

    monkeypatch.setattr(reader, "PRESENCE_MAX_Z", np.inf)
    image = Image.open(f"{bundled_samples_dir()}/{name}").convert("RGB")
    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.BILINEAR)
    hypotheses = synchronise(image, templates, 3, layout_period=period_for(image.height, image.width))
    assert len(hypotheses) >= 2 and max(h.z for h in hypotheses) < 6.0, [h.z for h in hypotheses]


def test_comb_reports_nothing_strong_on_unmarked_textures():
    """Under no mark the comb's best lattice stays near the search's own maximum of noise
    (every period and angle), far under a marked image's (`test_comb_finds_the_period_and_angle`:
    above 8)."""
    for seed in (3, 4, 5, 6):
        w = whiten(analysis_luma(np.clip(np.rint(texture(seed)), 0, 255).astype(np.uint8))[0])
        assert all(lattice.score < 7.0 for lattice in comb_lattices(w, (1.0, 1.0), 3))


def test_refine_lattice_corrects_a_slightly_wrong_period(templates):
    image, period = marked_image(templates)
    w = whiten(analysis_luma(np.asarray(image))[0]).astype(np.float64)
    bank = template_bank(templates)
    off = period * 1.004 * np.eye(2)  # 0.4 % long: a quarter tile sample of drift per period
    rough = register(w, off, bank, (1.0, 1.0))
    refined = refine_lattice(w, off, bank, rough)
    assert refined is not None
    before = np.abs(off - period * np.eye(2)).max()
    assert np.abs(refined - period * np.eye(2)).max() < before / 3, refined
    assert register(w, refined, bank, (1.0, 1.0)).z > rough.z


def test_luma_of_a_pillow_rgbx_view_equals_that_of_a_copy():
    from filigree.watermarker import image_pixels
    image = Image.fromarray(np.clip(np.rint(texture(6, 64, 96)), 0, 255).astype(np.uint8)).convert("RGB")
    view = image_pixels(image)[0]
    assert not view.flags.c_contiguous  # Pillow's 4-byte pixels, seen as RGB
    np.testing.assert_array_equal(analysis_luma(view)[0], analysis_luma(np.ascontiguousarray(view))[0])


@pytest.mark.parametrize("shape", [(56, 1043), (1043, 56), (56, 1100)])
def test_a_thin_image_whose_period_range_is_almost_empty_reads_without_error(templates, shape):
    """Half the shorter analysis side only just above the shortest period searched: no lattice,
    no exception."""
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    hypotheses = synchronise(pixels, templates, 3, layout_period=period_for(*shape))
    assert all(h.z < MAX_NULL_Z for h in hypotheses)
