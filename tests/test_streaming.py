"""Streaming separation: a causal model chunk by chunk equals the same model offline; separate.py --stream on
files and pipes; what cannot stream is refused in one line."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import separate
from speechsep.inference.model_folder import load_separator
from speechsep.inference.stream_files import StreamingFileSeparator, StreamOptions
from speechsep.inference.streaming import RunningLevel, StreamingError, StreamSeparator
from speechsep.models.conv_tasnet import MaskNet, depthwise_conv
from speechsep.output_files import is_temporary
from speechsep.training.config import load_hparams, resolved_yaml
from tests.helpers import REPO, SAMPLE_RATE, error_lines, limit_file_size, two_speaker_recording, write_recording

TINY_CAUSAL = {"N_encoder_out": 32, "kernel_size": 16, "B": 8, "H": 16, "X": 3, "R": 2}


def save_causal_run(run, config="demo-causal.yaml", **sizes):
    """A tiny causal run folder as train.py saves one (weights moved off their initial values, no training)."""
    values = {"data_folder": str(run / "data"), "output_folder": str(run), **TINY_CAUSAL, **sizes}
    overrides = "\n".join(f"{key}: {json.dumps(value)}" for key, value in values.items())
    hparams = load_hparams(REPO / "hparams" / config, overrides)
    run.mkdir(parents=True, exist_ok=True)
    (run / "hyperparams.yaml").write_text(resolved_yaml(REPO / "hparams" / config, overrides))
    torch.manual_seed(0)
    with torch.no_grad():
        for module in hparams["modules"].values():
            for parameter in module.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    hparams["checkpointer"].save_checkpoint(meta={"si-snr": 5.0}, name="best")
    return run


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    return save_causal_run(tmp_path_factory.mktemp("runs") / "causal")


def offline(separator, mixture):
    """The model on the whole input, as separate_batch computes it: [time, num_spks]."""
    with torch.no_grad():
        return separator.separate_batch(mixture.unsqueeze(0))[0]


def streamed(modules, mixture, chunk_sizes, **options):
    stream = StreamSeparator(modules, **options)
    pieces, position = [], 0
    while position < mixture.shape[0]:
        size = next(chunk_sizes)
        pieces.append(stream.push(mixture[position : position + size]))
        position += size
    pieces.append(stream.finish())
    return torch.cat(pieces)


# ---------------------------------------------------------------- the causal mask network
@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 8), (5, 3), (2, 30)])
def test_causal_depthwise_conv_is_the_left_padded_conv_with_exact_gradients(kernel_size, dilation):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, kernel_size, dilation=dilation, groups=4, bias=False).double()
    x = torch.randn(2, 4, 30, dtype=torch.float64, requires_grad=True)
    expected = conv(torch.nn.functional.pad(x, (dilation * (kernel_size - 1), 0)))
    assert torch.allclose(depthwise_conv(x, conv, causal=True), expected)
    assert torch.autograd.gradcheck(lambda x, w: depthwise_conv(x, conv, causal=True), (x, conv.weight))


@pytest.mark.parametrize("activation", ["relu", "prelu"])
def test_a_causal_masknet_never_reads_later_frames_and_steps_through_any_pieces_as_a_whole(activation):
    torch.manual_seed(0)
    masknet = MaskNet(16, 8, 12, 3, 3, 2, 2, activation=activation, padding="zeros", norm_type="cLN", causal=True)
    masknet.eval()
    mixture_w = torch.rand(2, 16, 80)
    changed = mixture_w.clone()
    changed[..., 50:] += torch.rand(2, 16, 30)
    with torch.no_grad():
        whole = masknet(mixture_w)
        assert torch.equal(masknet(changed)[..., :50], whole[..., :50])
        assert not torch.allclose(masknet(changed)[..., 50:], whole[..., 50:])
        state, pieces = masknet.initial_state(2), []
        for start, end in [(0, 1), (1, 2), (2, 9), (9, 40), (40, 41), (41, 80)]:
            masks, state = masknet.step(mixture_w[..., start:end], state)
            pieces.append(masks)
    assert (torch.cat(pieces, dim=-1) - whole).abs().max() < 1e-5
    assert [tuple(past.shape) for past in state] == [(2, 2 * 2**x, 12) for _ in range(2) for x in range(3)]


def test_a_causal_config_trains_every_parameter_and_has_the_receptive_field_docs_say(tmp_path):
    """One training step of hparams/demo-causal.yaml at its size, through the causal taps and the cLN backward."""
    from speechsep.training.losses import pit_si_snr_loss

    hparams = load_hparams(REPO / "hparams" / "demo-causal.yaml", {"data_folder": str(tmp_path)})
    modules = hparams["modules"]
    assert modules["masknet"].receptive_field == 509  # docs/streaming.md: about 2 s at 4 ms a frame
    _, sources = two_speaker_recording(0.5)
    mixture_w = modules["encoder"](sources.sum(dim=1, keepdim=True).T)
    masks = modules["masknet"](mixture_w)
    est_sources = torch.stack([modules["decoder"](mixture_w * mask) for mask in masks], dim=-1)
    pit_si_snr_loss(est_sources[:, : sources.shape[0]], sources.unsqueeze(0)).mean().backward()
    for name, module in modules.items():
        for parameter_name, parameter in module.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), (name, parameter_name)
            assert parameter.grad.abs().sum() > 0, (name, parameter_name)


def test_only_a_causal_masknet_steps():
    masknet = MaskNet(16, 8, 12, 3, 3, 1, 2, padding="zeros")
    with pytest.raises(ValueError, match="only a causal MaskNet computes frame by frame"):
        masknet.step(torch.rand(1, 16, 4), [])


def test_separate_py_called_from_python_leaves_the_threads_and_the_sigterm_handler_as_they_were(causal_run, tmp_path):
    write_recording(tmp_path / "talk.wav", two_speaker_recording(0.3)[0].numpy())
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    assert (
        separate.main(
            ["--model", str(causal_run), "--stream", "--output-dir", str(tmp_path / "out")]
            + [str(tmp_path / "talk.wav")]
        )
        == 0
    )
    assert torch.get_num_threads() == threads and signal.getsignal(signal.SIGTERM) is handler


def test_a_causal_masknet_needs_per_frame_norms_and_zero_padding():
    for norm_type, padding in (("gLN", "zeros"), ("cLN", "reflect")):
        with pytest.raises(ValueError, match="a causal MaskNet needs norm_type cLN and padding zeros"):
            MaskNet(16, 8, 12, 3, 3, 1, 2, padding=padding, norm_type=norm_type, causal=True)


# ---------------------------------------------------------------- StreamSeparator
@pytest.mark.parametrize("seed", range(4))
def test_streaming_equals_the_offline_model_for_any_chunk_sizes(causal_run, seed):
    """Random chunk sizes: single samples, sizes below and above one hop and one window, odd ones."""
    separator = load_separator(causal_run)
    rng = random.Random(seed)
    mixture = two_speaker_recording(1.0 + seed * 0.37, seed)[0]
    sizes = iter(lambda: rng.choice([1, 1, 2, 3, 7, 8, 15, 16, 17, 80, 333, 1001]), None)
    got = streamed(separator.mods, mixture, sizes)
    expected = offline(separator, mixture)
    assert got.shape == expected.shape == (mixture.shape[0], 2)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_streaming_the_recipe_sized_causal_config_equals_it_offline(tmp_path):
    run = save_causal_run(tmp_path / "run", "convtasnet-causal.yaml", N_encoder_out=64, B=16, H=32, X=4, R=2)
    separator = load_separator(run)
    mixture = two_speaker_recording(0.7)[0]
    got = streamed(separator.mods, mixture, iter(lambda: 80, None))
    expected = offline(separator, mixture)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streaming_on_a_gpu_equals_the_offline_model_there(causal_run):
    separator = load_separator(causal_run, device="cuda")
    mixture = two_speaker_recording(1.0)[0]
    got = streamed(separator.mods, mixture, iter(lambda: 80, None), device="cuda")
    expected = offline(separator, mixture.cuda()).cpu()
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_a_stream_keeps_a_bounded_state_however_long_it_runs(causal_run):
    stream = StreamSeparator(load_separator(causal_run).mods)
    sizes = []
    for k in range(400):
        stream.push(torch.randn(81))
        if k in (10, 399):
            sizes.append((stream._pending.numel(), stream._tail.numel(), [tuple(past.shape) for past in stream._state]))
    assert sizes[0][1:] == sizes[1][1:]  # the overlap-add tail and the mask network's past: fixed sizes
    assert max(sizes[0][0], sizes[1][0]) < stream.window  # samples waiting for a frame: less than one window


def test_inputs_shorter_than_a_window_give_zeros_as_offline_and_a_finished_stream_takes_nothing(causal_run):
    stream = StreamSeparator(load_separator(causal_run).mods)
    assert stream.push(torch.randn(5)).shape == (0, 2)
    assert torch.equal(stream.finish(), torch.zeros(5, 2))
    with pytest.raises(StreamingError, match="finished"):
        stream.push(torch.randn(3))


def test_non_causal_models_are_refused_saying_why(tmp_path):
    run = save_causal_run(tmp_path / "run", "demo.yaml")  # the demo's non-causal network
    with pytest.raises(StreamingError, match="non-causal Conv-TasNet .* only a causal Conv-TasNet streams"):
        StreamSeparator(load_separator(run).mods)


def test_the_running_level_brings_scaled_estimates_to_the_mixtures_level():
    _, sources = two_speaker_recording(6.0)
    mixture = sources.sum(dim=1)
    level = RunningLevel(2, SAMPLE_RATE, seconds=2.0)
    scaled = sources * torch.tensor([40.0, 0.05])
    out = torch.cat([level(scaled[i : i + 80], mixture[i : i + 80]) for i in range(0, mixture.shape[0], 80)])
    tail = slice(3 * SAMPLE_RATE, None)  # once the past holds a few seconds
    assert torch.allclose(out[tail], sources[tail], atol=1e-3 * sources.abs().max())
    assert torch.equal(out[: level.block], torch.zeros(level.block, 2))  # nothing tells the level yet
    assert out.abs().max() <= 2 * sources.abs().max()  # the raw scale (40x) never comes through


# ---------------------------------------------------------------- separate.py --stream
def run_separate(*arguments, stdout=subprocess.PIPE, **kwargs):
    command = [sys.executable, "separate.py", *map(str, arguments)]
    return subprocess.run(command, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, timeout=120, **kwargs)


def test_separate_py_streams_a_file_into_the_tracks_a_stream_gives(causal_run, tmp_path):
    mixture = two_speaker_recording(2.0)[0] * 0.5
    write_recording(tmp_path / "talk.wav", mixture.numpy())
    status = separate.main(
        ["--model", str(causal_run), "--stream", "--precision", "fp32", "--output-dir", str(tmp_path / "out")]
        + [str(tmp_path / "talk.wav")]
    )
    assert status == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["talk_s1.wav", "talk_s2.wav"]
    streamer = StreamingFileSeparator(load_separator(causal_run), StreamOptions(precision="fp32"))
    expected = torch.cat(list(streamer.separate_chunks(torch.split(mixture, streamer.chunk))))
    expected = expected / max(1.0, float(expected.abs().max()))  # the tracks are never clipped
    for k in range(2):
        track, rate = sf.read(tmp_path / "out" / f"talk_s{k + 1}.wav", dtype="float32")
        assert rate == SAMPLE_RATE and track.shape == (mixture.shape[0],)
        assert np.abs(track - expected[:, k].numpy()).max() <= 1.5 / 32768


def test_separate_py_pipes_raw_pcm_from_stdin_to_stdout_as_it_comes(causal_run):
    mixture = two_speaker_recording(1.5)[0] * 0.5
    pcm = (mixture * 32768).round().clamp(-32768, 32767).to(torch.int16).numpy().astype("<i2")
    arguments = ["--model", causal_run, "--stream", "--raw-rate", SAMPLE_RATE, "--precision", "fp32"]
    result = run_separate(*arguments, "--chunk-ms", 10, "--output-dir", "-", "-", input=pcm.tobytes())
    assert result.returncode == 0, result.stderr.decode()
    out = np.frombuffer(result.stdout, dtype="<i2").reshape(-1, 2)  # nothing but the samples on stdout
    assert out.shape == (mixture.shape[0], 2)
    streamer = StreamingFileSeparator(load_separator(causal_run), StreamOptions(precision="fp32"))
    chunks = torch.split(torch.from_numpy(pcm.astype(np.float32) / 32768), streamer.chunk)
    expected = torch.cat(list(streamer.separate_chunks(chunks))).numpy()
    assert np.abs(out / 32768 - np.clip(expected, -1, 32767 / 32768)).max() <= 1.5 / 32768


def test_stdout_that_cannot_take_the_stream_and_a_file_on_stdin_are_one_line_each(causal_run, tmp_path):
    arguments = ["--model", causal_run, "--stream", "--raw-rate", SAMPLE_RATE, "--output-dir", "-", "-"]
    with open("/dev/full", "wb") as full:
        result = run_separate(*arguments, input=np.zeros(8000, dtype="<i2").tobytes(), stdout=full)
    assert result.returncode == 1
    assert [line for line in result.stderr.decode().splitlines() if line.startswith("error:")] == [
        "error: cannot write to stdout: No space left on device"
    ]
    write_recording(tmp_path / "talk.wav", two_speaker_recording(0.5)[0].numpy())
    result = run_separate(*arguments, input=(tmp_path / "talk.wav").read_bytes())
    assert result.returncode == 1 and result.stdout == b""
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stdin holds a WAV file, not raw PCM" in errors[0]


def test_the_tracks_level_does_not_depend_on_the_chunk_size(causal_run):
    streamer = StreamingFileSeparator(load_separator(causal_run), StreamOptions(precision="fp32"))
    mixture = two_speaker_recording(2.0)[0]
    outputs = [torch.cat(list(streamer.separate_chunks(torch.split(mixture, size)))) for size in (80, 37, 1000)]
    assert all((output - outputs[0]).abs().max() <= 1e-5 * outputs[0].abs().max() for output in outputs[1:])


def test_a_live_pipe_gets_each_chunk_before_the_next_one_is_sent(causal_run):
    """What a live input sees: output comes back while stdin is still open."""
    arguments = ["--model", causal_run, "--stream", "--raw-rate", SAMPLE_RATE, "--chunk-ms", 100]
    process = subprocess.Popen(
        [sys.executable, "separate.py", *map(str, arguments), "--output-dir", "-", "-"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        process.stdin.write(np.zeros(1600, dtype="<i2").tobytes())  # two chunks of 100 ms
        process.stdin.flush()
        first = process.stdout.read(2 * 2 * 400)  # blocks until the model has output that much
        assert len(first) == 1600
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert process.returncode == 0


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--stream", "--shifts", "2", "x.wav"], "--shifts needs the whole input: drop it or --stream"),
        (["--stream", "--window", "3", "--mixture-consistency", "x.wav"], "--window, --mixture-consistency need"),
        (["--stream", "--raw-rate", "8000", "x.wav"], "--raw-rate is the rate of raw PCM on stdin (INPUT -)"),
        (["--stream", "--raw-rate", "0", "--output-dir", "-", "-"], "--raw-rate must be a positive number"),
        (["--stream", "--chunk-ms", "1e12", "x.wav"], "--chunk-ms must lie in (0, 10000], got 1000000000000.0"),
        (["-"], "INPUT - (stdin) goes with --stream"),
        (["--chunk-ms", "20", "x.wav"], "--chunk-ms goes with --stream"),
        (["--stream", "--raw-rate", "8000", "-"], "stdin (INPUT -) is separated to stdout (--output-dir -), and only"),
        (
            ["--stream", "--output-dir", "-", "-"],
            "raw PCM on stdin has no header: give its sample rate with --raw-rate",
        ),
        (["--stream", "--raw-rate", "8000", "--output-dir", "-", "-", "x.wav"], "INPUT - (stdin) is a stream of its"),
        (["--stream", "--raw-rate", "8000", "--normalize", "peak", "--output-dir", "-", "-"], "--normalize peak"),
    ],
)
def test_contradicting_stream_options_are_one_line_before_any_model_is_loaded(arguments, message, caplog, tmp_path):
    if "--output-dir" not in arguments:
        arguments = ["--output-dir", str(tmp_path / "out"), *arguments]
    assert separate.main(["--model", str(tmp_path / "no-model"), *arguments]) == 2
    lines = error_lines(caplog)
    assert len(lines) == 1 and message in lines[0]


def test_model_and_input_errors_of_a_stream_are_one_line_each(causal_run, tmp_path, caplog):
    noncausal = save_causal_run(tmp_path / "noncausal", "demo.yaml")
    write_recording(tmp_path / "talk.wav", two_speaker_recording(0.5)[0].numpy())
    out = ["--output-dir", str(tmp_path / "out")]
    assert separate.main(["--model", str(noncausal), "--stream", *out, str(tmp_path / "talk.wav")]) == 2
    assert separate.main(["--model", str(causal_run), "--stream", "--chunk-ms", "0.5", *out, "x.wav"]) == 2
    write_recording(tmp_path / "wide.wav", np.zeros(16000, dtype=np.float32), sample_rate=16000)
    assert separate.main(["--model", str(causal_run), "--stream", *out, str(tmp_path / "wide.wav")]) == 1
    lines = error_lines(caplog)
    assert len(lines) == 3
    assert "this model cannot stream: its mask network is a non-causal Conv-TasNet" in lines[0]
    assert "--chunk-ms 0.5 is 4 samples at the model's 8000 Hz, less than one hop of its encoder" in lines[1]
    assert "16000 Hz, and --stream takes the model's 8000 Hz" in lines[2]
    caplog.clear()
    assert separate.main(["--model", str(causal_run), "--stream", "--raw-rate", "16000", "--output-dir", "-", "-"]) == 2
    assert error_lines(caplog) == [
        "error: stdin is 16000 Hz (--raw-rate), and the model separates 8000 Hz: resample before the pipe "
        "(e.g. sox -t raw -e signed -b 16 -c 1 -r 16000 - -t raw -r 8000 -)"
    ]


def test_a_stream_that_cannot_be_written_leaves_no_track_and_no_scratch_file(causal_run, tmp_path):
    write_recording(tmp_path / "talk.wav", two_speaker_recording(0.5)[0].numpy())  # 32 kB of float estimates
    out = tmp_path / "out"
    result = run_separate(
        "--model", causal_run, "--stream", "--output-dir", out, tmp_path / "talk.wav", preexec_fn=limit_file_size(20000)
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {out / 'talk_s1.wav'}" in errors[0]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_stream_stopped_midway_leaves_no_track_and_the_next_run_clears_its_scratch_file(causal_run, tmp_path, stop):
    """SIGTERM (to the process group, as schedulers send it) removes the scratch file at once; after a SIGKILL
    the next write of the same tracks does."""
    write_recording(tmp_path / "long.wav", np.tile(two_speaker_recording(2.0)[0].numpy(), 60))  # two minutes
    out = tmp_path / "out"
    command = [sys.executable, "separate.py", "--model", str(causal_run), "--stream", "--output-dir", str(out)]
    process = subprocess.Popen(
        [*command, str(tmp_path / "long.wav")], cwd=REPO, start_new_session=True, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(is_temporary(path) for path in out.iterdir())):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, stop)
    stderr = process.communicate()[1].decode()
    left = list(out.iterdir())
    if stop == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM and left == []
        assert "error: stopped by SIGTERM: tracks written are whole, nothing is half-written" in stderr
    assert [path for path in left if not is_temporary(path)] == []
    write_recording(tmp_path / "long.wav", two_speaker_recording(0.5)[0].numpy())
    assert separate.main([*command[2:], str(tmp_path / "long.wav")]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["long_s1.wav", "long_s2.wav"]
