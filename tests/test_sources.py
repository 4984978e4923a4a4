"""Source expansion: files, directories, globs, list files, videos; nothing named disappears."""

from yolotune.io.sources import expand_sources


def touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_directory_natural_order_skips_non_media_and_flags_media_named_dirs(tmp_path):
    for name in ("img10.jpg", "img2.JPG", "img1.png", "clip.mp4", "notes.txt"):
        touch(tmp_path / name)
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "sub").mkdir()
    out = expand_sources([tmp_path])
    names = [(i.path.split("/")[-1], i.kind) for i in out.items]
    assert names == [("clip.mp4", "video"), ("folder.jpg", "error"), ("img1.png", "image"), ("img2.JPG", "image"), ("img10.jpg", "image")]
    assert out.skipped == [str(tmp_path / "notes.txt")]


def test_globs_lists_and_missing(tmp_path):
    a = touch(tmp_path / "a" / "x1.jpg")
    b = touch(tmp_path / "a" / "deep" / "x2.jpg")
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# comment\n\n{a}\na/deep/x2.jpg\nmissing.jpg\n")  # relative entries resolve against the list
    out = expand_sources([str(tmp_path / "**" / "*.jpg"), str(tmp_path / "*.nothing"), lst, tmp_path / "gone.png"])
    got = [(i.path, i.kind, i.error) for i in out.items]
    assert got[:2] == [(str(b), "image", None), (str(a), "image", None)]  # glob matches in sorted path order
    assert got[2] == (str(tmp_path / "*.nothing"), "error", "glob pattern matched no files")
    assert got[3] == (str(a), "image", None)
    assert got[4] == (str(tmp_path / "a/deep/x2.jpg"), "image", None)
    assert got[5][1:] == ("error", "no such file or directory") and got[5][0] == "missing.jpg"
    assert got[6] == (str(tmp_path / "gone.png"), "error", "no such file or directory")


def test_explicit_file_with_unknown_suffix_is_an_image_to_sniff(tmp_path):
    f = touch(tmp_path / "photo.data")
    assert [(i.kind) for i in expand_sources([f]).items] == ["image"]


def test_decoder_threads_share_the_cores_between_sources():
    from yolotune.io.streams import decoder_threads

    assert decoder_threads(1, 16) == 0  # one source: FFmpeg's own choice (a thread per core)
    assert decoder_threads(4, 16) == 4 and decoder_threads(100, 16) == 1 and decoder_threads(4, 2) == 1


def test_i420_pictures_copy_into_a_slot_exactly_as_to_ndarray_lays_them_out(tmp_path):
    """What a decoder process writes into a ring slot: FFmpeg's planes without their row padding (100 pixels wide:
    the rows are padded), the same bytes as to_ndarray(format="yuv420p")."""
    import av
    import numpy as np

    from yolotune.data.synth import write_video
    from yolotune.io.streams import I420Picture

    clip = write_video(tmp_path / "narrow.mp4", frames=3, size=(60, 100), seed=4)
    with av.open(str(clip)) as c:
        frames = list(c.decode(video=0))
    assert any(p.line_size > p.width for p in frames[0].planes)  # padded rows: the case that matters
    for f in frames:
        pic = I420Picture(f)
        dst = np.full(pic.shape, 7, np.uint8)
        pic.write_into(dst)
        want = f.to_ndarray(format="yuv420p")
        assert pic.shape == want.shape and pic.nbytes == want.nbytes and np.array_equal(dst, want)


def test_recursive_globs_follow_each_real_file_once_through_symlink_loops(tmp_path):
    import os
    import time

    root = tmp_path / "photos"
    a = touch(root / "a.jpg")
    b = touch(root / "sub" / "b.jpg")
    os.symlink(".", root / "self")  # a loop: photos/self/self/self/...
    os.symlink("..", root / "sub" / "up")  # a second loop through the parent
    os.symlink("a.jpg", root / "alias.jpg")  # the same real file by another name
    t0 = time.perf_counter()
    out = expand_sources([str(root / "**" / "*.jpg")])
    assert time.perf_counter() - t0 < 5  # loops are not walked 40 levels deep (two loops: 2^40 paths)
    got = sorted(os.path.realpath(i.path) for i in out.items)
    assert got == sorted([os.path.realpath(a), os.path.realpath(b)]) and all(i.kind == "image" for i in out.items)
    assert [os.path.realpath(i.path) for i in expand_sources([root]).items].count(os.path.realpath(a)) == 1


def test_broken_and_looping_symlinks_say_what_they_are(tmp_path):
    import os

    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    os.symlink("gone.jpg", tmp_path / "dangling.jpg")
    loop, dangling = expand_sources([tmp_path / "loop.jpg", tmp_path / "dangling.jpg"]).items
    assert loop.kind == "error" and "symbolic link loop" in loop.error
    assert dangling.kind == "error" and "broken symbolic link" in dangling.error and "gone.jpg" in dangling.error
