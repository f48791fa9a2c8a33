"""The exports of panicflow.visual on the small analysis experiment, checked against the store read independently
(panicflow.open_experiment and load_image): the dummy text-to-image models draw solid colours, so a pixel says which
image a video cell, timeline tile or gallery tile shows."""

import csv
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import time

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering
from panicflow.cli import main
from panicflow.errors import UserError
from panicflow.visual import gallery, images, report, timeline, video
from panicflow.visual.source import Source, parse_runs


def _runs(store, eid):
    """Per run: (image steps, their hashes, the caption written of each: the texts up to the next image)."""
    ds = panicflow.open_experiment(eid, store=store)["/"].ds
    kind, digest, text, length = ds.kind.values, ds.output_hash.values, ds.text.values, ds.length.values
    out = {}
    for r in range(len(length)):
        n = int(length[r])
        steps = [s for s in range(n) if kind[r, s] == "image"]
        captions = []
        for i, s in enumerate(steps):
            end = steps[i + 1] if i + 1 < len(steps) else n
            captions.append("\n".join(str(text[r, t]) for t in range(s + 1, end) if str(text[r, t])))
        out[r] = (steps, [str(digest[r, s]) for s in steps], captions)
    return out


def _colour(store, digest):
    return np.asarray(panicflow.load_image(digest, store=store).convert("RGB"))[0, 0].astype(int)


def _patch(frame, x, y, r=2):
    return frame[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3).mean(axis=0)


def _colour_tags(path):
    """What a player reads of the video's colours: ffmpeg's stream line (the container's and the decoder's view, e.g.
    "yuv420p(tv, bt709, progressive)", where one name means primaries, transfer and matrix agree) and the bitstream's
    own VUI fields (H.264/HEVC code 1 = BT.709, 2 = unspecified), the way ffprobe would show them."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    trace = subprocess.run([exe, "-hide_banner", "-i", str(path), "-c", "copy", "-bsf:v", "trace_headers", "-f", "null", "-"],
                           capture_output=True, text=True).stderr
    stream = re.search(r"Video: .*?(yuv420p\([^)]*\))", info).group(1)
    vui = {name: {int(v) for v in re.findall(rf"\b{name}\s+[01]+ = (\d+)", trace)}
           for name in ("colour_primaries", "transfer_characteristics", "matrix_coefficients")}
    return stream, vui


BT709 = ("yuv420p(tv, bt709, progressive)", {"colour_primaries": {1}, "transfer_characteristics": {1}, "matrix_coefficients": {1}})


def test_parse_runs():
    assert parse_runs("3, 0,7-9,8", 10) == [0, 3, 7, 8, 9]
    assert parse_runs([2, 1, 2], 3) == [1, 2] and parse_runs(None, 3) is None
    for bad, msg in (("1,x", "expected run numbers"), ("5-2", "is empty"), ("10", "there is no run 10"), ("", "no runs")):
        with pytest.raises(UserError, match=msg):
            parse_runs(bad, 10)


@pytest.mark.parametrize("block", [256, 3])  # 3: pictures and captions that straddle the blocks steps are read in
def test_run_info_matches_the_stored_run_arrays(analysis_experiment, monkeypatch, block):
    from panicflow.visual import source as source_module

    monkeypatch.setattr(source_module, "BLOCK", block)
    store, eid = analysis_experiment
    ds = panicflow.open_experiment(eid, store=store)["/"].ds
    source = Source(eid, store)
    runs = source.select()
    assert runs == list(range(16))
    for info in source.run_info(runs[::-1]):
        r = info.run
        assert ",".join(info.network) == ds.network.values[r] and info.seed == ds.seed.values[r]
        assert info.prompt == ds.prompt.values[r] and info.stop_reason == ds.stop_reason.values[r]
        assert (info.length, info.loop_start, info.loop_period) == (ds.length.values[r], ds.loop_start.values[r], ds.loop_period.values[r])
        pictures = list(source.pictures(info))
        steps, hashes, captions = _runs(store, eid)[r]
        assert [(p.step, p.hash, p.caption) for p in pictures] == list(zip(steps, hashes, captions))
        assert source.picture_count(info) == len(pictures)
        assert source.last_picture(info) == pictures[-1]


def test_video_frames_show_each_runs_images(analysis_experiment, tmp_path):
    store, eid = analysis_experiment
    expected = _runs(store, eid)
    calls = []
    out = video.export_video(eid, tmp_path / "m.mp4", store=store, resolution="640x360", fps=4,
                             progress=lambda d, n: calls.append((d, n)))
    n_frames = max(len(s) for s, _, _ in expected.values())
    assert calls[-1] == (n_frames, n_frames) and len(calls) == n_frames
    assert [p.name for p in tmp_path.iterdir()] == ["m.mp4"]  # no temporary file left
    reader = imageio_ffmpeg.read_frames(out)
    meta = next(reader)
    assert meta["codec"] == "h264" and tuple(meta["size"]) == (640, 360) and meta["fps"] == 4
    frames = [np.frombuffer(f, np.uint8).reshape(360, 640, 3).astype(int) for f in reader]
    assert len(frames) == n_frames
    assert imageio_ffmpeg.count_frames_and_secs(out)[0] == n_frames

    source = Source(eid, store)
    lay = video.layout(source.run_info(source.select()), 640, 360)
    assert len(lay.cells) == 16 and lay.tile >= 20
    colours = {}
    for run, (steps, hashes, _) in expected.items():
        x, y = lay.cells[run]
        for i, frame in enumerate(frames):
            digest = hashes[min(i, len(hashes) - 1)]  # a run that has ended keeps its last image
            if digest not in colours:
                colours[digest] = _colour(store, digest)
            got = _patch(frame, x + lay.tile // 2, y + lay.tile // 2)
            assert np.abs(got - colours[digest]).max() <= 16, (run, i)
    # the progress strip fills up: dark at the right end of the first frame, light at the end of the last
    assert frames[0][-2, -3].mean() < 100 and frames[-1][-2, -3].mean() > 180
    small = video.layout(source.run_info(source.select()), 320, 180)
    assert small.tile < video.LABEL_MIN_TILE and small.cell_label_size == 0  # unlabelled: the top-left corner gives the step


def test_video_is_tagged_and_encoded_bt709(analysis_experiment, tmp_path):
    """Primaries and transfer were "unknown" (only the matrix was tagged), in the container and in the H.264 VUI: a
    player may then guess other colours (issue 22 item 9). The luma of solid cells shows BT.709's matrix was used."""
    store, eid = analysis_experiment
    out = video.export_video(eid, tmp_path / "m.mp4", store=store, runs="0,9", resolution="320x180")
    assert _colour_tags(out) == BT709
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    raw = subprocess.run([exe, "-v", "error", "-i", out, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
                         capture_output=True, check=True).stdout
    luma = np.frombuffer(raw[:320 * 180], np.uint8).reshape(180, 320).astype(float)
    source = Source(eid, store)
    lay = video.layout(source.run_info([0, 9]), 320, 180)
    far_from_601 = 0
    for run in (0, 9):
        x, y = lay.cells[run]
        r, g, b = _colour(store, next(source.pictures(source.run_info([run])[0])).hash)
        got = luma[y + lay.tile // 2 - 2:y + lay.tile // 2 + 3, x + lay.tile // 2 - 2:x + lay.tile // 2 + 3].mean()
        bt709, bt601 = (16 + 219 * (c[0] * r + c[1] * g + c[2] * b) / 255 for c in ((0.2126, 0.7152, 0.0722), (0.299, 0.587, 0.114)))
        assert abs(got - bt709) <= 2, (run, got, bt709, bt601)
        far_from_601 += abs(bt709 - bt601) > 6
    assert far_from_601  # the check could tell the two matrices apart


def test_video_cells_say_their_run_seed_and_step(analysis_experiment, tmp_path):
    """Cells said nothing of which run or seed they were, and frames carried only the frame index (issue 22 item 9). The
    frames as drawn are compared pixel for pixel with the labels drawn alone on the cell's solid colour; the encoded
    video keeps a dark band with light text where the label is."""
    from panicflow.visual.frames import fit_tile

    store, eid = analysis_experiment
    source = Source(eid, store)
    infos = source.run_info([0, 5, 9])  # two networks, seeds 1 and -1 (unseeded)
    lay = video.layout(infos, 640, 360)
    assert lay.tile >= video.LABEL_MIN_TILE and lay.cell_label_size >= 8
    pictures = {i.run: list(source.pictures(i)) for i in infos}
    n, stream = video.frames(source, infos, 640, 360)
    assert n == max(len(p) for p in pictures.values())

    def drawn(colour, size, draw_on):
        reference = Image.new("RGB", size, colour)
        draw_on(ImageDraw.Draw(reference))
        return np.asarray(reference)

    from PIL import ImageDraw

    for i, frame in enumerate(stream):
        frame = np.asarray(frame)
        for info in infos:
            ended = i >= len(pictures[info.run])
            p = pictures[info.run][min(i, len(pictures[info.run]) - 1)]
            colour = tuple(np.asarray(fit_tile(source.image(p.hash), 8))[4, 4])
            top, bottom = lay.cell_label_boxes(info.run)
            for (x, y, w, h), text in ((top, video.run_label(info)), (bottom, video.step_label(p, ended))):
                want = drawn(colour, (w, h), lambda d: video.draw_cell_label(d, lay, (0, 0, w, h), text))
                assert (frame[y:y + h, x:x + w] == want).all(), (i, info.run, text)
            assert text == f"step {p.step}" + (" · ended" if ended else "")
            cx, cy = lay.cells[info.run]
            assert tuple(frame[cy + lay.tile // 2, cx + lay.tile // 2]) == colour  # the picture is still seen
        going = [pictures[r.run][i].step for r in infos if i < len(pictures[r.run])]
        lines = video.counter_lines(i, n, going)
        assert lines[1] == f"picture {i + 1} / {n}" and lines[0].startswith("step")
        x, y, w, h = lay.counter_box
        want = drawn(video.BACKGROUND, (lay.width, lay.height), lambda d: video.draw_counter(d, lay, lines))
        assert (frame[y:y + h, x:x + w] == want[y:y + h, x:x + w]).all(), i
    assert video.run_label(infos[0]) == "run 0 · seed 1" and video.run_label(infos[1]) == "run 5 · unseeded"

    out = video.export_video(eid, tmp_path / "l.mp4", store=store, runs="0,5,9", resolution="640x360")
    reader = imageio_ffmpeg.read_frames(out)
    next(reader)
    first = np.frombuffer(next(reader), np.uint8).reshape(360, 640, 3).astype(int)
    for info in infos:
        for x, y, w, h in lay.cell_label_boxes(info.run):
            band = first[y + 1:y + h - 1, x + 1:x + w // 3].mean(axis=2)  # the text starts at the left of the band
            assert band.min() < 60 and band.max() > 180, info.run  # black band, light text: not the picture


def test_video_chosen_runs_and_bad_options(analysis_experiment, tmp_path):
    store, eid = analysis_experiment
    out = video.export_video(eid, tmp_path / "two.mkv", store=store, runs="0,5", resolution="320x180", codec="h265")
    meta = next(imageio_ffmpeg.read_frames(out))
    assert meta["codec"] == "hevc" and tuple(meta["size"]) == (320, 180)
    assert _colour_tags(out) == BT709
    assert video.parse_resolution("4K") == (3840, 2160)
    for kwargs, msg in (({"resolution": "101x100"}, "must be even"), ({"resolution": "big"}, "choose hd, 4k, 8k"),
                        ({"codec": "vp8"}, "--codec"), ({"fps": 0}, "--fps"), ({"runs": "99"}, "no run 99")):
        with pytest.raises(UserError, match=msg):
            video.export_video(eid, tmp_path / "x.mp4", store=store, **kwargs)
    with pytest.raises(UserError, match="--out"):
        video.export_video(eid, tmp_path / "x.gif", store=store)
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".x*"))


def test_layout_fills_the_frame():
    from panicflow.visual.source import RunInfo

    runs = [RunInfo(i, (f"N{i // 12}",), i % 6, f"p{(i // 6) % 2}", 10, "length", -1, -1) for i in range(24)]
    lay = video.layout(runs, 1920, 1080)  # 2 prompts x 2 networks x 6 seeds
    xs = sorted({x for x, _ in lay.cells.values()})
    ys = sorted({y for _, y in lay.cells.values()})
    assert len(lay.cells) == 24 and lay.caption_h > 0
    # every cell inside the frame, none overlapping, and the grid wide or tall to within one tile of the frame
    assert xs[0] >= 0 and xs[-1] + lay.tile <= 1920 and ys[-1] + lay.tile + lay.caption_h <= 1080 - lay.strip_h
    assert all(b - a >= lay.tile for a, b in zip(xs, xs[1:])) and all(b - a >= lay.tile + lay.caption_h for a, b in zip(ys, ys[1:]))
    assert (1920 - (xs[-1] + lay.tile - xs[0])) < 0.2 * 1920 + lay.tile or (1080 - (ys[-1] + lay.tile - ys[0])) < 0.2 * 1080 + lay.tile


def test_timeline_tiles_are_the_evenly_spaced_images(analysis_experiment, tmp_path):
    store, eid = analysis_experiment
    expected = _runs(store, eid)
    paths = timeline.export_timeline(eid, tmp_path, "0,5", store=store, steps=4, tile=64)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["run-0000.png", "run-0005.png"]
    for run, path in zip((0, 5), paths):
        steps, hashes, _ = expected[run]
        n = len(hashes)
        chosen = sorted({round(i * (n - 1) / 3) for i in range(4)})
        image = np.asarray(Image.open(path).convert("RGB")).astype(int)
        gap = 64 // 16
        assert image.shape[1] == gap + len(chosen) * (2 * 64 + 2 * gap)
        assert image.std() > 10  # not blank
        y = image.shape[0] - gap - 32  # middle of the tile row
        for i, k in enumerate(chosen):
            x = gap + i * (2 * 64 + 2 * gap) + 32
            assert (image[y, x] == _colour(store, hashes[k])).all(), (run, k)
    with pytest.raises(UserError, match="--runs"):
        timeline.export_timeline(eid, tmp_path, None, store=store)


def test_timeline_figure_rows_are_runs_by_prompt_and_columns_networks(analysis_experiment, tmp_path, monkeypatch, capsys):
    """`export timeline` wrote one strip per run only: the figure puts every run in one image, runs in rows grouped by
    prompt, networks in columns (the earlier tool's first figure; issue 22 item 10). Each tile is checked by its pixel."""
    store, eid = analysis_experiment
    expected = _runs(store, eid)
    calls = []
    out = timeline.export_timeline_figure(eid, tmp_path / "f.png", store=store, steps=4, tile=48, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (16, 16) and len(calls) == 16
    source = Source(eid, store)
    infos = source.run_info(source.select())
    lay = timeline.figure_layout(infos, 4, 48)
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape == (lay.height, lay.width, 3) and set(lay.cells) == set(range(16))
    white = np.array(timeline.BACKGROUND)
    for run, (x, y) in lay.cells.items():
        hashes = expected[run][1]
        for i, k in enumerate(timeline.spaced(len(hashes), 4)):
            assert (image[y + 24, x + i * lay.pitch + 24] == _colour(store, hashes[k])).all(), (run, k)
        steps_label = image[y + 48:y + 48 + lay.label_h, x:x + 48]
        heading = image[y - lay.label_h:y, x:x + 4 * lay.pitch]
        assert steps_label.min() < 160 and heading.min() < 160, run  # "step N" under the first picture, "run R · ..." above
    info = {i.run: i for i in infos}
    for a in range(16):
        for b in range(16):
            (xa, ya), (xb, yb) = lay.cells[a], lay.cells[b]
            assert (xa == xb) == (info[a].network == info[b].network)  # a column per network
            if info[a].prompt == "a cat" and info[b].prompt == "a red circle":
                assert ya < yb  # the prompts' groups, in config order
            if info[a].network == info[b].network and info[a].prompt == info[b].prompt and a < b:
                assert ya < yb  # runs of a pair downwards by run number
    for text, (x, y, w, h) in lay.prompt_boxes:  # the prompt at its group's left: dark text on the grey card
        card = image[y:y + h, x:x + w]
        assert (card == timeline.CARD).all(axis=2).mean() > 0.8 and card.min() < 100, text
    for text, (x, y, w, h) in lay.network_boxes:
        assert image[y:y + h, x:x + w].min() < 100, text

    # a choice of runs leaves a pair's missing runs empty: runs 0, 2 (a cat, seeds 1 and 2), 1 (a red circle) of the first
    # network, 8 (a cat, seed 1) of the second
    out = timeline.export_timeline_figure(eid, tmp_path / "some.jpg", "0,1,2,8", store=store, steps=2, tile=40)
    lay = timeline.figure_layout(source.run_info([0, 1, 2, 8]), 2, 40)
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    (x0, y0), (x1, y1), (x2, y2), (x8, y8) = (lay.cells[r] for r in (0, 1, 2, 8))
    assert Image.open(out).format == "JPEG" and image.shape[:2] == (lay.height, lay.width)
    assert y8 == y0 < y2 < y1 and x0 == x1 == x2 < x8
    assert np.abs(image[y2 - lay.label_h:y2 + 40 + lay.label_h, x8:x8 + 2 * lay.pitch] - white).max() <= 8  # no run 10 chosen

    # the CLI: --figure, the path as JSON; the size capped, saying so
    monkeypatch.setattr(timeline, "MAX_PIXELS", 600_000)
    assert main(["export", "timeline", eid, "--figure", "--out", str(tmp_path / "c.png"), "--steps", "3", "--json", "--store", store]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f'["{tmp_path / "c.png"}"]'
    assert "note: the figure at --tile 256 would be" in captured.err
    w, h = Image.open(tmp_path / "c.png").size
    assert w * h <= 600_000 and w * h > 0.5 * 600_000  # the largest tile that fits, not the smallest
    for argv, msg in ((["--figure", "--out", str(tmp_path / "x.gif")], "--out: the figure is written as"),
                      (["--figure", "--steps", "0"], "--steps"), (["--figure", "--runs", "99"], "no run 99"),
                      (["--figure", "--format", "tiff"], "--format"), (["--out", str(tmp_path / "t")], "--runs: name the runs")):
        assert main(["export", "timeline", eid, *argv, "--store", store]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err  # one error line
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".*"))


def test_timeline_figure_size_is_capped():
    """200 runs of 8 pictures at 256 px would make a 9,040 x 16,086 px canvas; the tile shrinks to the largest that fits,
    and a figure that does not fit even at 32 px is refused with what to choose."""
    from panicflow.visual.source import RunInfo

    runs = [RunInfo(i, (f"N{i // 50}",), (i // 5) % 10, f"p{i % 5}", 40, "length", -1, -1) for i in range(200)]
    assert not timeline.figure_layout(runs, 8, 256).fits()
    lay = timeline.fit_figure(runs, 8, 256)
    assert lay.fits() and not timeline.figure_layout(runs, 8, lay.tile + 1).fits() and lay.tile >= 32
    assert max(lay.width, lay.height) <= timeline.MAX_SIDE and lay.pixels <= timeline.MAX_PIXELS
    assert timeline.fit_figure(runs[:8], 8, 256).tile == 256  # a small figure keeps its tile
    many = [RunInfo(i, (f"N{i // 2500}",), i // 5 % 500, f"p{i % 5}", 40, "length", -1, -1) for i in range(5000)]
    with pytest.raises(UserError, match="choose fewer --runs or --steps"):
        timeline.fit_figure(many, 8, 256)


def test_images_export_is_the_stored_images_with_an_index(analysis_experiment, tmp_path):
    store, eid = analysis_experiment
    expected = _runs(store, eid)
    index = images.export_images(eid, tmp_path / "webp", "0-2", store=store)
    rows = list(csv.DictReader(open(index, encoding="utf-8")))
    assert list(rows[0]) == ["run", "network", "prompt", "run_seed", "step", "model", "seed", "caption", "hash", "file"]
    want = [(r, s, h, c) for r in (0, 1, 2) for s, h, c in zip(*expected[r])]
    assert [(int(x["run"]), int(x["step"]), x["hash"], x["caption"]) for x in rows] == want
    ds = panicflow.open_experiment(eid, store=store)["/"].ds
    for x in rows:
        data = (tmp_path / "webp" / x["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == x["hash"]  # the stored lossless bytes
        assert x["file"] == f"run-{int(x['run']):04d}/run-{int(x['run']):04d}_step-{int(x['step']):05d}.webp"
        r, s = int(x["run"]), int(x["step"])
        assert x["model"] == ds.model.values[r, s] and int(x["seed"]) == ds.invocation_seed.values[r, s]
        # which run it is, without the store at hand (issue 22 item 10)
        assert (x["network"], x["prompt"], int(x["run_seed"])) == (ds.network.values[r], ds.prompt.values[r], ds.seed.values[r])
    index = images.export_images(eid, tmp_path / "png", [1], store=store, fmt="png")
    row = next(csv.DictReader(open(index, encoding="utf-8")))
    got = np.asarray(Image.open(tmp_path / "png" / row["file"]))
    assert row["file"].endswith(".png") and (got == np.asarray(panicflow.load_image(row["hash"], store=store))).all()
    assert not list((tmp_path / "png").glob(".*"))


@pytest.fixture(scope="module")
def clustered(analysis_experiment, client, tmp_path_factory):
    """A copy of the analysis experiment with a real DummyText clustering (kept out of the shared store)."""
    store, eid = analysis_experiment
    copy = str(tmp_path_factory.mktemp("visual") / "store")
    shutil.copytree(store, copy)
    # other modules store their own results in the shared experiment: start from none, so that this
    # copy holds exactly the one clustering below (the gallery's "no clustering of X" error depends on it)
    shutil.rmtree(os.path.join(copy, "experiments", eid, "data.zarr", "analysis"), ignore_errors=True)
    name = clustering.cluster([eid], "DummyText", store=copy, client=client, min_cluster_size=5, reduce="pca:4")
    return copy, eid, name


def test_gallery_rows_medoids_and_members(clustered, tmp_path):
    store, eid, name = clustered
    a = clustering.assignments(eid, name, store=store)
    assert len(a["cluster_id"]) >= 1
    ds = panicflow.open_experiment(eid, store=store)["/"].ds
    kind, digest, text = ds.kind.values, ds.output_hash.values, ds.text.values

    def shown(r, s):  # a caption with the image it was written from
        if kind[r, s] == "image":
            return str(digest[r, s]), str(text[r, s + 1]) if s + 1 < ds.length.values[r] else ""
        img = max(t for t in range(s) if kind[r, t] == "image")
        return str(digest[r, img]), str(text[r, s])

    source = Source(eid, store)
    group = source.exp.group(read_only=True)[f"analysis/clusters/{name}"]
    sample = gallery.sample_members(source, group, 3, seed=0, exclude={})
    again = gallery.sample_members(source, group, 3, seed=0, exclude={})
    assert sample == again
    labels = a["label"]
    for c in a["cluster_id"]:
        members = {shown(r, s) for r, s in zip(*np.nonzero(labels == c))}
        pictures = [(d, cap) for d, cap, _, _ in sample[int(c)]]
        assert len(pictures) == min(3, len(members)) and len(set(pictures)) == len(pictures)
        assert set(pictures) <= members
        for d, cap, r, s in sample[int(c)]:  # each labelled with where it is: a member's run and step
            assert labels[r, s] == c and shown(r, s) == (d, cap)

    out = gallery.export_gallery(eid, tmp_path / "g.png", "DummyText", store=store, examples=4, tile=64)
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.std() > 10
    order = sorted(range(len(a["cluster_id"])), key=lambda i: (-a["size"][i], a["cluster_id"][i]))
    gap, big, small = max(6, 64 // 12), max(11, 64 // 9), max(8, 64 // 14)
    from panicflow.visual.frames import font, line_height

    head_h = line_height(font(big, True)) + 2 * line_height(font(big))
    row_h = head_h + 64 + 4 * line_height(font(small)) + gap // 2 + 2 * gap  # "run R · step S", the caption
    title_h = line_height(font(big, True)) + 2 * gap
    assert image.shape[0] == title_h + len(order) * row_h
    for row, i in enumerate(order):  # the first tile of each row is the medoid's image
        y = title_h + row * row_h + head_h + gap // 2 + 32
        medoid = shown(int(a["medoid_run"][i]), int(a["medoid_step"][i]))
        assert (image[y, gap + 32] == _colour(store, medoid[0])).all()
    # the largest clusters only, by default 24 (137 clusters made a 41,971 px tall image): here 1
    one = np.asarray(Image.open(gallery.export_gallery(eid, tmp_path / "one.png", "DummyText", store=store, examples=4,
                                                       tile=64, limit=1)))
    assert one.shape[0] == title_h + row_h
    assert gallery.DEFAULT_LIMIT == 24
    with pytest.raises(UserError, match="--limit"):
        gallery.export_gallery(eid, tmp_path / "v.png", "DummyText", store=store, limit=-1)
    with pytest.raises(UserError, match="no clustering of DummyVision"):
        gallery.export_gallery(eid, tmp_path / "v.png", "DummyVision", store=store)
    with pytest.raises(UserError, match="no embedding model"):
        gallery.export_gallery(eid, tmp_path / "v.png", "Nope", store=store)
    with pytest.raises(UserError, match="no complete clustering 'x'"):
        gallery.export_gallery(eid, tmp_path / "v.png", "DummyText", "x", store=store)


def test_cli_commands(clustered, tmp_path, capsys):
    store, eid, name = clustered
    assert main(["export", "images", eid, "--runs", "3", "--out", str(tmp_path / "i"), "--store", store]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "i" / "index.csv")
    assert main(["export", "gallery", eid, "--model", "DummyText", "--clustering", name, "--out", str(tmp_path / "g.jpg"),
                 "--examples", "2", "--store", store, "--json"]) == 0
    assert capsys.readouterr().out.strip() == f'["{tmp_path / "g.jpg"}"]' and Image.open(tmp_path / "g.jpg").format == "JPEG"
    assert main(["export", "timeline", eid, "--runs", "1", "--out", str(tmp_path / "t"), "--store", store]) == 0
    assert (tmp_path / "t" / "run-0001.png").exists()
    assert main(["report", eid, "--out", str(tmp_path / "r.html"), "--store", store, "--max-runs", "4"]) == 0
    page = (tmp_path / "r.html").read_text()
    if importlib.util.find_spec("panicflow.analysis.plots"):  # the charts of `panicflow plot`, when that module is there
        assert page.count("<figure>") >= 2 and "diagrams.png" in page
    assert main(["report", eid, "--out", str(tmp_path / "r2.html"), "--store", store, "--max-runs", "4", "--no-plots"]) == 0
    assert "<figure>" not in (tmp_path / "r2.html").read_text()
    capsys.readouterr()
    for argv, msg in ((["export", "video", eid, "--runs", "2-1"], "--runs: the range '2-1' is empty"),
                      (["export", "timeline", eid, "--runs", "1", "--steps", "0"], "--steps"),
                      (["export", "images", eid, "--format", "tiff"], "--format"),
                      (["report", eid, "--out", str(tmp_path / "r.pdf")], "--out: the report is an .html file"),
                      (["report", eid, "--charts", str(tmp_path / "none")], "--charts")):
        assert main([*argv, "--store", store]) == 2, argv
        assert msg in capsys.readouterr().err
    assert main(["export", "timeline", eid, "--store", store]) == 2  # --runs is required


def test_report_is_self_contained(clustered, tmp_path):
    store, eid, _ = clustered
    charts = tmp_path / "charts"
    charts.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(charts / "a.png")
    (charts / "a.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')  # a.png's twin: left out
    (charts / "b.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>')
    page = report.build_report(eid, store, charts=charts, max_runs=5, viewer_runs=2, viewer_frames=3)
    import re

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from elsewhere
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count("<figure>") == 2 and "a.png" in page and "b.svg" in page and "a.svg" not in page
    assert page.count('<tr><td>') == 5 and page.count('data-run="') == 2
    assert "Runs 0-4 of 16" in page
    assert "hdbscan-DummyText" in page  # provenance lists the clustering


def test_the_served_report_answers_only_its_own_host_and_a_closed_browser_is_quiet(analysis_experiment, capfd):
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 sends that name as
    Host; the server must not answer it (issue 22 item 3). A browser closing mid-answer printed a
    25-line BrokenPipe traceback."""
    import http.client
    import socket

    from panicflow.visual import report

    store, eid = analysis_experiment
    with report.serve_report(eid, store, port=0, plots=False, max_runs=4).start() as server:
        port = server.httpd.server_address[1]

        def get(host: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/status", headers={"Host": host})
            status = conn.getresponse().status
            conn.close()
            return status

        for good in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert get(good) == 200, good
        for bad in ("evil.example.com", f"evil.example.com:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1.nip.io", ""):
            assert get(bad) == 403, bad
        for _ in range(5):  # ask for the whole page and go away at once
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        time.sleep(1.0)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_report_draws_transitions_and_stays_once_stored_and_writes_nothing(clustered, tmp_path):
    """`transitions` and `stays` appeared only with --charts (issue 22 item 7): the page draws them
    when the clustering's sequences are stored, and otherwise says what to run; the report never
    writes into the store. A missing drift names every embedder, not the first alone."""
    from panicflow.analysis.results import list_results
    from panicflow.analysis.sequences import sequences
    from panicflow.store import Store

    store, eid, name = clustered
    exp = Store(store).experiment(eid)
    before = set(list_results(exp, "sequences"))
    paths, skipped = report.draw_charts(eid, store, tmp_path / "a")
    notes = dict(s.split(": ", 1) for s in skipped)
    if name not in before:
        assert f"analyse sequences {eid} --clustering {name}" in notes["transitions"]
        assert set(list_results(exp, "sequences")) == before  # nothing written by the page
    if not list_results(exp, "drift"):
        models = exp.config.embedding_models
        assert all(m in notes["drift"] for m in models) and len(models) > 1
    sequences(eid, name, store=store)
    paths, skipped = report.draw_charts(eid, store, tmp_path / "b")
    drawn = {p.stem.split("-")[0] for p in paths}
    assert {"transitions", "stays"} <= drawn, skipped


def test_the_served_report_listens_at_once_and_draws_the_charts_of_each_load(analysis_experiment, tmp_path, monkeypatch):
    """Started while an experiment ran, the served page said "no persistence diagram yet" on every
    reload: it drew its charts once, before listening (13-45 s before the URL was printed). It now
    listens at once and draws at a load, again only when the data changed (issue 22 item 1)."""
    import shutil
    import urllib.request

    from panicflow.analysis.drift import semantic_drift

    src, eid = analysis_experiment
    store = str(tmp_path / "store")
    shutil.copytree(src, store)  # this test stores a new result: its own copy
    # without drift, whichever test stored some in the shared experiment before this one ran
    from panicflow.store import Store

    shutil.rmtree(os.path.join(store, "experiments", Store(store).experiment(eid).id, "data.zarr", "analysis", "drift"),
                  ignore_errors=True)
    drawn = []
    real = report.chart_section
    monkeypatch.setattr(report, "chart_section", lambda *a, **k: drawn.append(1) or real(*a, **k))
    with report.serve_report(eid, store, port=0, max_runs=4).start() as server:
        assert drawn == []  # listening, nothing drawn yet

        def page() -> str:
            req = urllib.request.Request(server.url, headers={"Host": server.url.split("/")[2]})
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.read().decode()

        first = page()
        assert "Not drawn: drift" in first and 'alt="drift"' not in first
        page()
        assert len(drawn) == 1  # an unchanged experiment: drawn once
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, Client(lc) as c:
            semantic_drift(eid, "DummyText", store=store, client=c)  # data that came after the server started
        after = page()
        assert len(drawn) == 2 and 'alt="drift"' in after and "Not drawn: drift" not in after
