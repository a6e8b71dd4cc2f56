"""Writing files whole or not at all (`speechsep.output_files`): a failed write leaves nothing, an exclusive
create has one winner, a dangling link is refused, a group of files is written all together."""

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from speechsep import output_files
from speechsep.locking import LockHeld, folder_locked
from speechsep.output_files import OutputError, is_temporary, text_content, write_file, write_files, write_text
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, limit_file_size, train_command


def failing_writer(error: BaseException):
    """A writer that writes part of a file, then fails as a full disk (or Ctrl-C) would."""

    def write(path):
        path.write_text("half of it")
        raise error

    return write


def overtaken_writer(target):
    """A slow writer of `target`: while it writes, another writer names `target` with "fast"."""

    def write(path):
        path.write_text("slow")
        write_text(target, "fast")

    return write


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'a.csv'}: No space left on device"):
        write_file(tmp_path / "a.csv", failing_writer(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_file(tmp_path / "a.csv", failing_writer(KeyboardInterrupt()))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_old_file(tmp_path):
    write_text(tmp_path / "a.json", "old")
    with pytest.raises(OutputError):
        write_file(tmp_path / "a.json", failing_writer(OSError(errno.ENOSPC, "No space left")), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"


def test_without_overwrite_an_existing_file_is_kept(tmp_path):
    write_text(tmp_path / "a.txt", "first")
    with pytest.raises(OutputError, match="a.txt exists; pass --overwrite"):
        write_text(tmp_path / "a.txt", "second")
    write_text(tmp_path / "a.txt", "third", overwrite=True)
    assert (tmp_path / "a.txt").read_text() == "third"


def test_of_two_writers_of_one_name_the_later_fails_and_the_first_file_stays(tmp_path):
    """The second writer starts (its name is free) and the first finishes while it writes."""
    target = tmp_path / "a_s1.wav"
    with pytest.raises(OutputError, match="a_s1.wav exists"):
        write_file(target, overtaken_writer(target))
    assert target.read_text() == "fast"
    assert [p.name for p in tmp_path.iterdir()] == ["a_s1.wav"]


def test_on_a_filesystem_without_hard_links_the_name_is_still_created_exclusively(tmp_path, monkeypatch):
    def no_hard_links(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(output_files.os, "link", no_hard_links)
    target = tmp_path / "a.txt"
    with pytest.raises(OutputError, match="a.txt exists"):
        write_file(target, overtaken_writer(target))
    assert target.read_text() == "fast"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_group_is_written_whole_or_not_at_all(tmp_path):
    with pytest.raises(OutputError):
        write_files(
            {
                tmp_path / "results.csv": lambda path: path.write_text("rows"),
                tmp_path / "results_summary.json": failing_writer(OSError(errno.ENOSPC, "No space left")),
            }
        )
    assert list(tmp_path.iterdir()) == []

    write_text(tmp_path / "b.wav", "someone else's")  # the second name is taken: the first is removed again
    with pytest.raises(OutputError, match="b.wav exists"):
        write_files({tmp_path / "a.wav": lambda p: p.write_text("a"), tmp_path / "b.wav": lambda p: p.write_text("b")})
    assert [p.name for p in tmp_path.iterdir()] == ["b.wav"]


def test_a_dangling_symlink_is_refused_not_followed(tmp_path):
    outside = tmp_path / "outside.wav"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.wav").symlink_to(outside)
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="a.wav is a symbolic link to nothing"):
            write_text(tmp_path / "out" / "a.wav", "data", overwrite=overwrite)
    assert not outside.exists()


def test_a_temporary_left_by_a_killed_process_is_removed_by_the_next_write(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)  # a process of this host that has ended
    written = []
    write_text(tmp_path / "a.csv", "x")
    write_file(tmp_path / "b.csv", lambda path: written.append(path.name) or path.write_text("y"))
    leftover = tmp_path / written[0].replace(f"-{os.getpid()}-", f"-{dead_pid}-").replace(".b.", ".a.")
    leftover.write_text("half")
    assert is_temporary(leftover)
    write_text(tmp_path / "a.csv", "z", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]


def test_audio_over_a_file_size_limit_fails_with_one_line_and_leaves_nothing(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, numpy, soundfile
        from speechsep.output_files import OutputError, write_file
        try:
            write_file({str(tmp_path / "long.wav")!r}, lambda path: soundfile.write(path, numpy.zeros(40000), 8000))
        except OutputError as err:
            sys.exit(f"error: {{err}}")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, preexec_fn=limit_file_size(20000)
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {tmp_path / 'long.wav'}: System error.; is the disk full? (nothing was written there)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_train_py_on_a_full_disk_stops_with_one_error_line_and_leaves_no_partial_checkpoint(tmp_path):
    """Files limited to a little more than the copy of train.py: the first checkpoint is the first write that
    fails (its masknet is larger), which must end the run with one line, not an uncaught CheckpointWriteError."""
    data_folder = make_wsj0mix(tmp_path / "data", per_split=2)
    output = tmp_path / "out"
    sizes = {**TINY_CONVTASNET, "N_encoder_out": 32, "B": 32, "H": 64}
    command = train_command("convtasnet.yaml", data_folder, output, N_epochs=1, batch_size=2, **sizes)
    limit = (REPO / "train.py").stat().st_size + 8192
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, preexec_fn=limit_file_size(limit))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: Could not write checkpoint {output / 'save' / 'CKPT+'}"), result.stderr[-2000:]
    assert f"files of at most {limit} bytes (ulimit -f)" in last_line  # torch's own words do not say why
    assert [path.name for path in (output / "save").iterdir() if "CKPT" in path.name] == []


def group_writer_script(folder, content: str, pause_after_first_name: bool = False) -> str:
    """A process that writes `g_s1.txt` and `g_s2.txt` with `content` into `folder`, with overwrite; paused after
    naming the first (it says "named" and waits for a line on stdin) if asked."""
    return textwrap.dedent(
        f"""
        import os, sys
        from speechsep.output_files import text_content, write_files
        replace = os.replace
        def replace_then_pause(*args):
            replace(*args)
            if {pause_after_first_name!r} and not sys.stdin.closed:
                print("named", flush=True)
                sys.stdin.readline()
                sys.stdin.close()
        os.replace = replace_then_pause
        folder = {str(folder)!r}
        write_files({{f"{{folder}}/g_s{{k}}.txt": text_content({content!r}) for k in (1, 2)}}, overwrite=True)
        """
    )


def test_two_processes_overwriting_one_group_never_interleave_their_names(tmp_path):
    """Process A is paused between naming its two files: the folder is locked then, so process B, overwriting
    the same group at that moment, names its files before or after A's pair, never between them."""
    run_a = subprocess.Popen(
        [sys.executable, "-c", group_writer_script(tmp_path, "A", pause_after_first_name=True)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert run_a.stdout.readline() == "named\n"
        with pytest.raises(LockHeld), folder_locked(tmp_path, wait=False):
            pass
        run_b = subprocess.Popen([sys.executable, "-c", group_writer_script(tmp_path, "B")], cwd=REPO)
        run_a.stdin.write("go on\n")
        run_a.stdin.flush()
        assert (run_a.wait(timeout=60), run_b.wait(timeout=60)) == (0, 0)
    finally:
        run_a.kill()
    contents = [(tmp_path / f"g_s{k}.txt").read_text() for k in (1, 2)]
    assert contents in (["A", "A"], ["B", "B"])


def test_files_a_group_supersedes_are_removed_once_it_is_named(tmp_path):
    for k in (1, 2, 3):
        write_text(tmp_path / f"g_s{k}.txt", "old")
    write_files(
        {tmp_path / f"g_s{k}.txt": text_content("new") for k in (1, 2)},
        overwrite=True,
        superseded=lambda: [tmp_path / "g_s3.txt"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g_s1.txt", "g_s2.txt"]
    assert (tmp_path / "g_s1.txt").read_text() == "new"
