"""The periodic layout served (filigree/periodic.py): salted codec, JND map, and reads after
geometric edits, with a real periodic bundle (tests/periodic_bundle.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filigree import Watermarker
from filigree.bundle import BundleError, read_card
from filigree.imaging.jnd import JndConfig, jnd_map, luminance_adaptation, mark_weights
from filigree.payload import choose_ecc
from filigree.periodic import PeriodicLayout, SaltedCodec
from filigree.resources import bundled_samples_dir
from periodic_bundle import build_linear_periodic_bundle

PAYLOAD = "0123456789abcdef"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return build_linear_periodic_bundle(str(tmp_path_factory.mktemp("periodic") / "bundle"))


@pytest.fixture(scope="module")
def wm(bundle_dir):
    return Watermarker.load(bundle_dir, "test-key")


@pytest.fixture(scope="module")
def photo():
    return Image.open(Path(bundled_samples_dir()) / "opencv_building.jpg").convert("RGB")


@pytest.fixture(scope="module")
def marked(wm, photo):
    return wm.embed(photo, PAYLOAD)


# -- codec ------------------------------------------------------------------------------------
def codec(key="k"):
    layout = PeriodicLayout()
    return SaltedCodec(128, choose_ecc(128 - layout.carried_bits), layout, key)


def test_default_periodic_code_carries_64_data_bits():
    spec = choose_ecc(120)
    assert (spec.m, spec.t, spec.data_bits, spec.ecc_bits) == (7, 9, 64, 56)
    assert codec().data_bits == 64


@pytest.mark.parametrize("salt", [0, 5, 16, 255])
def test_salted_codec_round_trip(salt):
    c = codec()
    raw = c.encode(PAYLOAD, salt)
    logits = np.where(raw > 0.5, 4.0, -4.0)
    read = c.decode(logits, c.template_of(salt))
    assert read.detected and read.decoded == PAYLOAD


def test_salts_change_the_raw_bits_and_the_wrong_template_reads_nothing():
    c = codec()
    raws = [c.encode(PAYLOAD, s) for s in (3, 19, 200)]
    assert 40 < np.count_nonzero(raws[0] != raws[1]) < 90  # about half of 128 differ
    assert 40 < np.count_nonzero(raws[0] != raws[2]) < 90
    logits = np.where(raws[1] > 0.5, 4.0, -4.0)  # salt 19: template 1
    assert not c.decode(logits, template=2).detected


def test_salt_depends_on_content_and_payload_not_on_chance():
    c = codec()
    a = c.salt_for(1, b"image one")
    assert a == c.salt_for(1, b"image one")
    salts = {c.salt_for(1, bytes([i])) for i in range(64)}
    assert len(salts) > 40  # 64 images over 256 salts
    assert 0 <= a < c.salt_count == 256


def test_salted_codec_keeps_no_key():
    import pickle
    secret = b"a-secret-key-of-the-user-0123456789"
    c = codec(secret)
    assert secret not in pickle.dumps(c) and "<secret>" in repr(c)
    assert np.array_equal(c.encode(PAYLOAD, 7), codec(secret).encode(PAYLOAD, 7))


def test_salted_codec_rejects_a_code_that_does_not_fit():
    with pytest.raises(ValueError, match="do not hold"):
        SaltedCodec(128, choose_ecc(128), PeriodicLayout(), "k")


# -- JND --------------------------------------------------------------------------------------
def test_luminance_adaptation_matches_chou_li():
    la = luminance_adaptation(np.array([0.0, 127.0, 255.0]))
    assert la.tolist() == pytest.approx([20.0, 3.0, 6.0])


def test_jnd_is_higher_in_texture_than_in_flat_areas():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 127.0, np.float32)
    textured = flat + rng.normal(0, 30, flat.shape).astype(np.float32)
    assert jnd_map(flat).mean() == pytest.approx(3.0, abs=1e-4)
    # Sobel/8 of noise of std 30 averages ~16 grey levels per pixel: CM ~ 0.117 * 16 ~ 1.9
    assert 4.0 < jnd_map(textured).mean() < 5.0
    weights = mark_weights(flat, JndConfig(flat_share=0.5))
    assert weights.mean() == pytest.approx(1.5, abs=1e-4)
    assert mark_weights(textured, JndConfig(flat_share=0.5)).mean() > 1.5 * weights.mean()


def test_jnd_rejects_bad_input():
    with pytest.raises(ValueError):
        jnd_map(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError):
        JndConfig.from_dict({"flat_share": 2})


# -- bundle and card ----------------------------------------------------------------------------
def test_card_declares_the_layout(bundle_dir):
    card = read_card(bundle_dir)
    assert card.layout == PeriodicLayout()
    assert card.raw["layout"]["period"] == {"divisor": 8, "min": 64, "max": 384}


def test_card_with_another_period_rule_is_refused(bundle_dir, tmp_path):
    import json
    import shutil
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    card = json.loads((copy / "model.json").read_text())
    card["layout"]["period"]["divisor"] = 10
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="layout"):
        read_card(str(copy))


# -- embed and read -------------------------------------------------------------------------------
def test_embed_is_deterministic_and_visible_budget_is_kept(wm, photo, marked):
    again = wm.embed(photo, PAYLOAD)
    assert np.array_equal(np.asarray(again), np.asarray(marked))
    a, b = np.asarray(photo, np.float64), np.asarray(marked, np.float64)
    psnr = 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2))
    assert 36 < psnr < 50


def test_same_payload_gives_different_marks_on_different_images(wm, photo):
    flipped = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    r1 = np.asarray(wm.embed(photo, PAYLOAD), np.float64) - np.asarray(photo, np.float64)
    r2 = np.asarray(wm.embed(flipped, PAYLOAD), np.float64) - np.asarray(flipped, np.float64)
    r2 = r2[::-1]  # back to the first image's geometry: only the pattern differs now
    corr = np.corrcoef(r1[..., 1].ravel(), r2[..., 1].ravel())[0, 1]
    assert abs(corr) < 0.2


def _crop(image, fraction, x0, y0):
    side = fraction ** 0.5
    w, h = round(image.width * side), round(image.height * side)
    return image.crop((x0, y0, x0 + w, y0 + h))


EDITS = {
    "none": lambda im: im,
    "crop 64% off-centre": lambda im: _crop(im, 0.64, 101, 37),
    "shift 5%": lambda im: im.crop((round(im.width * 0.05), round(im.height * 0.05), im.width, im.height)),
    "margin 10%": lambda im: _margin(im, 0.1),
    "rotate 2°": lambda im: im.rotate(2, resample=Image.Resampling.BICUBIC),
    "mirror": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "turn 90°": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "screenshot 70%": lambda im: _screenshot(im),
}


def _margin(image, fraction):
    mx, my = round(image.width * fraction), round(image.height * fraction)
    canvas = Image.new("RGB", (image.width + 2 * mx, image.height + 2 * my))
    canvas.paste(image, (mx, my))
    return canvas


def _screenshot(image):
    small = image.resize((round(image.width * 0.7), round(image.height * 0.7)), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", image.size, (128, 128, 128))
    canvas.paste(small, (image.width // 7, image.height // 9))
    return canvas


@pytest.mark.parametrize("edit", list(EDITS))
def test_read_after_geometric_edit(wm, photo, marked, edit):
    read = wm.extract(EDITS[edit](marked))
    assert read.detected and read.decoded == PAYLOAD, read
    informed = wm.extract(EDITS[edit](marked), expected=PAYLOAD)
    assert informed.match and informed.ber < 0.1
    assert not wm.extract(EDITS[edit](photo)).detected


def test_another_key_reads_nothing(bundle_dir, marked):
    other = Watermarker.load(bundle_dir, "another-key")
    assert not other.extract(marked).detected


def test_tiny_and_flat_images_read_nothing(wm):
    assert not wm.extract(Image.new("RGB", (40, 30), (90, 90, 90))).detected
    assert not wm.extract(Image.new("RGB", (800, 600), (200, 200, 200))).detected


def _high_pass(x: np.ndarray) -> np.ndarray:
    """x minus its 9 x 9 box mean, per channel (what survives of an average of photos is
    their mark plus low-frequency content)."""
    from filigree.imaging.jnd import box_mean
    return np.stack([x[..., c] - box_mean(x[..., c], 9) for c in range(x.shape[2])], axis=2)


def averaging_estimate(wm) -> np.ndarray:
    """High-pass of the average of twelve 480 x 360 images marked with PAYLOAD."""
    rng = np.random.default_rng(1)
    base = np.asarray(Image.open(Path(bundled_samples_dir()) / "opencv_building.jpg").convert("RGB").resize((480, 360)),
                      np.float32)
    marked_set = []
    for i in range(12):
        im = base[:, ::-1] if i % 2 else base
        im = np.roll(im, (int(rng.integers(0, 90)), int(rng.integers(0, 120))), axis=(0, 1))
        marked_set.append(np.asarray(wm.embed(Image.fromarray(im.astype(np.uint8)), PAYLOAD), np.float32))
    return _high_pass(np.mean(marked_set, axis=0))


def _victim() -> np.ndarray:
    return np.asarray(Image.open(Path(bundled_samples_dir()) / "opencv_aloeL.jpg").convert("RGB").resize((480, 360)),
                      np.float32)


def test_averaging_attack_forges_without_the_per_image_salt(bundle_dir, monkeypatch):
    """The attack below is real: with one salt for every image (one payload, one pattern) the
    average's high-pass, added to an unmarked photo, reads as the payload."""
    wm = Watermarker.load(bundle_dir, "test-key")
    monkeypatch.setattr(wm.codec, "salt_for", lambda value, content: 0)
    forged = Image.fromarray(np.clip(_victim() + 3 * averaging_estimate(wm), 0, 255).astype(np.uint8))
    read = wm.extract(forged)
    assert read.detected and read.decoded == PAYLOAD


def test_averaging_attack_neither_forges_nor_removes(wm):
    """Twelve images of one size marked with one payload, averaged: the high-pass of the average
    is the attacker's estimate of the mark (without the key). Added to an unmarked image (at 1x
    and 3x) it must not read as the payload; subtracted from a marked image it must not remove
    the mark."""
    estimate = averaging_estimate(wm)
    victim = _victim()
    for gain in (1.0, 3.0):
        forged = Image.fromarray(np.clip(victim + gain * estimate, 0, 255).astype(np.uint8))
        assert not wm.extract(forged).detected
    marked = np.asarray(wm.embed(Image.fromarray(victim.astype(np.uint8)), PAYLOAD), np.float32)
    cleaned = Image.fromarray(np.clip(marked - estimate, 0, 255).astype(np.uint8))
    read = wm.extract(cleaned)
    assert read.detected and read.decoded == PAYLOAD


@pytest.mark.parametrize("degrees", [15, 37])
def test_reads_a_rotation_by_any_angle(wm, photo, marked, degrees):
    """The spectral comb searches every angle (docs/sync.md)."""
    turned = marked.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)
    read = wm.extract(turned)
    assert read.detected and read.decoded == PAYLOAD, read
    assert not wm.extract(photo.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)).detected


# -- the deeper search: windows ------------------------------------------------------------------
def test_window_boxes_cover_every_quarter_sized_piece():
    from filigree.sync import window_boxes
    boxes = window_boxes(600, 868)
    assert len(boxes) == 9 and boxes[0] == (0, 0, 300, 434) and boxes[-1] == (300, 434, 300, 434)
    for top in range(0, 301, 25):
        for left in range(0, 435, 31):  # a piece of half of each side, anywhere
            best = max(min(top + 300, y + h) - max(top, y) for y, _, h, _ in boxes)
            best_x = max(min(left + 434, x + w) - max(left, x) for _, x, _, w in boxes)
            assert best >= 0.75 * 300 and best_x >= 0.75 * 434


COLLAGE_PLACES = [(0, 0), (400, 250), (200, 120), (430, 0)]


def _collage(piece, place):
    """`piece` at half size pasted at `place` into a dense texture the size of the photo."""
    host = Image.open(Path(bundled_samples_dir()) / "opencv_aloeL.jpg").convert("RGB").resize(piece.size)
    host.paste(piece.resize((piece.width // 2, piece.height // 2), Image.Resampling.BICUBIC), place)
    return host


@pytest.mark.parametrize("place", COLLAGE_PLACES)
def test_a_straight_read_finds_a_half_size_marked_photo_pasted_into_another(wm, photo, marked, place):
    """A half-size marked photo anywhere in a textured one: the fold of the whole collage is
    diluted by the host; the window fold where the template shows best (`best_window_match`)
    and the fold weighted by the template's presence (`presence_weights`, the read's fifth
    hypothesis) read it. The unmarked collage reads nothing."""
    read = wm.extract(_collage(marked, place))
    assert read.detected and read.decoded == PAYLOAD, read
    assert not wm.extract(_collage(photo, place)).detected


def test_without_the_presence_weights_the_collage_is_missed(wm, marked, monkeypatch):
    import filigree.sync.reader as reader

    monkeypatch.setattr(reader, "presence_weights", lambda *args: None)  # an unweighted refold
    assert not wm.extract(_collage(marked, (200, 120))).detected


def test_presence_weights_follow_the_marked_part(wm, photo, marked):
    """The weights are higher over the pasted marked photo than over the host, and over the
    whole of a marked photo nearly even."""
    from filigree.sync import analysis_luma, synchronise, whiten
    from filigree.sync import TemplateMatch
    from filigree.sync.reader import presence_weights

    for image, piece in ((_collage(marked, (0, 0)), (300, 434)), (marked, marked.size[::-1])):
        luma, scale = analysis_luma(np.asarray(image))
        w = whiten(luma).astype(np.float64)
        found = [h for h in synchronise(image, wm.periodic.bank, 3) if h.lattice_score > 0]
        best = max(found, key=lambda h: h.z)
        match = TemplateMatch(best.template, best.dihedral, best.shift, best.z)
        weights = presence_weights(w, best.lattice * np.asarray(scale), wm.periodic.bank, match)
        inside = weights[: piece[0], : piece[1]].mean()
        outside = (weights.sum() - weights[: piece[0], : piece[1]].sum()) / max(1, weights.size - piece[0] * piece[1])
        if image is marked:
            assert (weights > 0).mean() > 0.8, (weights > 0).mean()
        else:
            assert inside > 3 * outside, (inside, outside)


def _in_a_larger_texture(piece, cell):
    """`piece` pasted at grid cell (column, row) of a dense texture three times its sides."""
    host = Image.open(Path(bundled_samples_dir()) / "opencv_aloeL.jpg").convert("RGB")
    host = host.resize((piece.width * 3, piece.height * 3))
    host.paste(piece, (piece.width * cell[0], piece.height * cell[1]))
    return host


@pytest.mark.parametrize("cell", [(2, 0), (1, 1)])
def test_reframe_reads_a_marked_photo_pasted_into_another(wm, photo, marked, cell):
    """The marked photo in a texture three times its sides: the straight read, at the whole
    image's analysis size (1024 px, 0.39 x), cannot resolve its period; the window search,
    each window at its own resolution, finds it and names the window."""
    collage = _in_a_larger_texture(marked, cell)
    assert not wm.extract(collage).detected
    read = wm.extract(collage, reframe=True)
    assert read.detected and read.decoded == PAYLOAD, read
    x, y, width, height = read.framing["window"]  # fractions of the collage's sides
    centre = ((cell[0] + 0.5) / 3, (cell[1] + 0.5) / 3)
    assert x <= centre[0] <= x + width and y <= centre[1] <= y + height
    assert width == height == 0.5
    assert not wm.extract(_in_a_larger_texture(photo, cell), reframe=True).detected


def test_window_hypotheses_place_the_tile_in_the_whole_image(wm, marked):
    """A window's hypothesis gives the embedded tile's origin in the whole image: the pasted
    copy's corner, up to whole periods of the found lattice."""
    from filigree.sync import window_hypotheses
    place = COLLAGE_PLACES[1]
    found = window_hypotheses(np.asarray(_collage(marked, place)), wm.periodic.bank)
    _, best = max(found, key=lambda pair: pair[1].z)
    assert best.z > 6
    steps = np.linalg.solve(best.basis.T, np.array([place[1], place[0]], float) - best.origin)
    assert np.allclose(steps, np.round(steps), atol=0.05), steps


def test_reframe_reads_a_pasted_photo_in_a_larger_collage_at_its_own_resolution(wm, marked):
    """The collage at 1.5 x (1302 x 900): its windows are analysed at their own resolution, not
    downscaled with the whole image below the pasted piece's small period (the straight read,
    at the whole image's analysis size, misses it)."""
    collage = _collage(marked, (200, 120))
    bigger = collage.resize((collage.width * 3 // 2, collage.height * 3 // 2), Image.Resampling.BICUBIC)
    assert not wm.extract(bigger).detected
    read = wm.extract(bigger, reframe=True)
    assert read.detected and read.decoded == PAYLOAD, read


def test_reframe_prices_the_straight_read_for_the_windows_too(wm, marked):
    """With the deeper search allowed, a straight read pays for the windows it may go on to
    (5 + 9 hypotheses instead of 5), so the two reads together keep the false-positive rate."""
    periodic = wm.periodic
    assert (periodic.tried(), periodic.tried(searching=True)) == (5, 14)
    plain, searching = wm.extract(marked), wm.extract(marked, reframe=True)
    assert plain.detected and searching.detected and searching.framing is None
    assert searching.p_value == pytest.approx(plain.p_value * 14 / 5, rel=1e-9)
