#!/usr/bin/env python3
"""Separate your own recordings with a trained model: one file per talker for every input.

    python separate.py --model results/sepformer-wsj0mix/1234 --output-dir separated meeting.flac calls/
    python separate.py --model exported_model --output-dir out "recordings/**/*.wav" --output-rate input

--model is a training output folder (its best checkpoint by validation SI-SNR), a folder written by
export.py, or a SpeechBrain separation model folder as published (e.g. speechbrain/sepformer-wsj02mix,
downloaded first: nothing is downloaded here). Inputs are files, folders (searched recursively for wav/flac/ogg) or glob patterns, at any
sample rate and channel count. Long files are separated window by window (see --window, --hop), with each
speaker kept on the same output track. Exit status: 0 if every input was separated, 1 if some failed (one
`error:` line each, the others are still separated), 2 if the model cannot be used. Nothing is
overwritten: an output that exists already is an error for its input unless --overwrite, and an output that
would replace an input always is. An input's tracks are written whole and all together, or not at all: under
temporary names, then named while --output-dir is locked; of two runs writing the same names at once, one
fails with an `error:` line (with --overwrite, one's set replaces the other's whole). With --overwrite, the
input's earlier tracks beyond the ones this run writes are removed too: its tracks are one run's set.
Folders searched for inputs skip the tracks written by earlier runs (and --output-dir when it lies inside one).

Only the tracks that hold a talker are written, as `<stem>_s1.wav`, `<stem>_s2.wav`, ... in the model's order: a
model of K outputs given fewer talkers leaves some outputs near silence or splits a voice between them, and each
stretch of the input is checked for both (speechsep.inference.counting; a copy of a voice is added back to it).
`--keep-all-tracks` writes all K; `--talkers N` the N loudest, uncounted. For every input separated, one JSON line on
stdout says how many talkers it holds, each output's level relative to the mixture, what each stretch holds, and which
output each written track is:
    {"input": "call.wav", "talkers": 1, "level_db": [-0.3, -21.5], "stretches": [...],
     "tracks": [{"output": 1, "file": "separated/call_s1.wav"}]}

With --stream, a causal model (hparams/demo-causal.yaml, hparams/convtasnet-causal.yaml) separates each input
chunk by chunk (--chunk-ms), as a live input would be, at the model's sample rate:

    python separate.py --model results/demo-causal --stream --output-dir separated call.wav
    arecord -t raw -f S16_LE -r 8000 -c 1 | python separate.py --model results/demo-causal --stream \\
        --raw-rate 8000 --output-dir - - | aplay -t raw -f S16_LE -r 8000 -c 2

`-` as the input reads raw 16-bit mono PCM from stdin (its rate given by --raw-rate), and `--output-dir -` writes
raw 16-bit PCM to stdout, one interleaved channel per speaker, each chunk as soon as it is separated.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import torch

from speechsep.data.audio_checks import printable
from speechsep.errors import RecipeError
from speechsep.inference.files import FileSeparator, SeparationOptions, expand_inputs, input_failure
from speechsep.inference.model_folder import load_separator
from speechsep.inference.stream_files import StreamingFileSeparator, StreamOptions
from speechsep.output_files import OutputError, check_target
from speechsep.training.hardware import PRECISIONS, check_device, inference_precision

logger = logging.getLogger("separate")


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = SeparationOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="audio files, folders or glob patterns; - : stdin (with --stream)"
    )
    parser.add_argument(
        "--model", required=True, help="training output folder, export.py folder or SpeechBrain model folder"
    )
    parser.add_argument(
        "--output-dir",
        required=True,
        help="where <stem>_s1.wav, <stem>_s2.wav, ... are written; - : stdout (with INPUT -)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="longest stretch separated at once, in seconds; longer inputs go in windows spread evenly over them "
        f"(default {defaults.window:g}, chosen by measurement: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--hop",
        type=float,
        default=None,
        help=f"seconds between window starts, at most; window - hop (at least 0.1 s) are cross-faded (default {defaults.hop:g})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"windows per forward pass (default {defaults.batch_size})"
    )
    parser.add_argument(
        "--output-rate",
        choices=("model", "input"),
        default=defaults.output_rate,
        help="write at the model's sample rate or each input's (default %(default)s)",
    )
    parser.add_argument(
        "--normalize",
        choices=("mixture", "peak"),
        default=defaults.normalize,
        help="mixture: estimates at the mixture's level; peak: each track peaks at 0.9 (default %(default)s)",
    )
    parser.add_argument(
        "--shifts",
        type=int,
        default=None,
        help="average the estimates over this many sub-hop delays of the input: a cheap ensemble, "
        f"that many times slower (the demo reports its test scores with 8; default {defaults.shifts})",
    )
    parser.add_argument(
        "--mixture-consistency",
        action="store_true",
        help="make the estimates sum to the mixture (what they leave out is shared equally); for "
        "mixtures of speech alone, not noisy ones (the demo reports its test scores with it)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults.precision,
        help="what the model computes in (autocast); auto: bf16 on CPUs and GPUs that compute it natively, fp16 "
        "on other GPUs, else fp32; with --stream, fp32 on CPUs (default %(default)s)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="separate chunk by chunk as a live input (causal models only); INPUT - reads raw PCM from stdin",
    )
    parser.add_argument(
        "--chunk-ms",
        type=float,
        default=None,
        help=f"with --stream: milliseconds of input handed over at a time (default {StreamOptions.chunk_ms:g})",
    )
    parser.add_argument(
        "--raw-rate", type=int, default=None, help="with INPUT -: the sample rate of the raw 16-bit mono PCM on stdin"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads the model computes with (default: PyTorch's; 1 with --stream, whose chunks are too small "
        "to share out: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--keep-all-tracks",
        action="store_true",
        help="write every output of the model, also those that hold no talker (by default only the tracks that hold "
        "one are written; a copy of another track is added back to it)",
    )
    parser.add_argument(
        "--talkers",
        type=int,
        default=None,
        help="the number of talkers in every input, when known: as many of the loudest tracks are written, uncounted",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default %(default)s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for long files")
    parser.add_argument("--quiet", action="store_true", help="only errors")
    return parser.parse_args(argv)


def separate_stdin(separator: StreamingFileSeparator, raw_rate: int) -> int:
    """Raw PCM from stdin to stdout through the model; the exit status."""
    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        if stream is None:
            logger.error(f"error: {name} is closed: INPUT - and --output-dir - need it open")
            return 2
        if stream.isatty():
            logger.error(f"error: {name} is a terminal, and the stream is raw 16-bit PCM: use a pipe or a file")
            return 2
    if raw_rate != separator.sample_rate:
        logger.error(
            f"error: stdin is {raw_rate} Hz (--raw-rate), and the model separates {separator.sample_rate} Hz: "
            f"resample before the pipe (e.g. sox -t raw -e signed -b 16 -c 1 -r {raw_rate} - -t raw -r "
            f"{separator.sample_rate} -)"
        )
        return 2
    try:
        num_samples, clipped = separator.separate_pipe(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        logger.error("error: stdout was closed before the end of the stream")
        return 1
    except RecipeError as err:
        logger.error(f"error: {err}")
        return 1
    logger.info(f"stdin: {num_samples / separator.sample_rate:.1f} s of audio separated")
    if clipped:
        logger.warning(f"{clipped} output samples were beyond the 16-bit range and clipped")
    return 0


def print_record(record: dict) -> bool:
    """One JSON line on stdout (an input's talkers and tracks); False, with one error line, if stdout cannot take it
    (a closed pipe, a full disk): the tracks are still written, and the exit status says a line is missing."""
    try:
        print(json.dumps(record), flush=True)
        return True
    except OSError as err:  # BrokenPipeError included
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        reason = "was closed" if isinstance(err, BrokenPipeError) else f"failed ({err.strerror or err})"
        logger.error(f"error: stdout {reason}: no more JSON lines; the tracks are still written")
        return False


def output_problem(path: Path, outputs: list[Path], inputs: set[Path], written_by: dict, overwrite: bool) -> str | None:
    """Why an input's outputs may not be written (they would replace an input, another input's outputs or,
    unless `overwrite`, an existing file), or None."""
    if path.stem in written_by:
        return f"its outputs would overwrite those of {written_by[path.stem]} (same name)"
    for output in outputs:
        if output.resolve() in inputs:
            return f"its output {output} would replace an input; choose another --output-dir"
        try:
            check_target(output, overwrite)
        except OutputError as err:
            return str(err)
    return None


def stream_problem(args: argparse.Namespace) -> str | None:
    """Why the stream options contradict each other or the others, or None."""
    stdin, stdout = "-" in args.inputs, args.output_dir == "-"
    if not args.stream:
        for flag, given in (
            ("--chunk-ms", args.chunk_ms is not None),
            ("--raw-rate", args.raw_rate is not None),
            ("INPUT - (stdin)", stdin),
            ("--output-dir - (stdout)", stdout),
        ):
            if given:
                return f"{flag} goes with --stream"
        return None
    offline = [
        flag
        for flag, given in (
            ("--window", args.window is not None),
            ("--hop", args.hop is not None),
            ("--batch-size", args.batch_size is not None),
            ("--shifts", args.shifts is not None),
            ("--mixture-consistency", args.mixture_consistency),
        )
        if given
    ]
    for flag, given in (("--keep-all-tracks", args.keep_all_tracks), ("--talkers", args.talkers is not None)):
        if given:
            return f"--stream writes every output as it comes, without counting talkers: drop {flag} or --stream"
    if offline:
        return (
            f"--stream separates each chunk as it comes, and {', '.join(offline)} "
            f"{'needs' if len(offline) == 1 else 'need'} the whole input: drop {'it' if len(offline) == 1 else 'them'} "
            "or --stream"
        )
    if stdin and len(args.inputs) > 1:
        return "INPUT - (stdin) is a stream of its own: give it alone"
    if stdin != stdout:
        return "stdin (INPUT -) is separated to stdout (--output-dir -), and only there: give both or neither"
    if stdin and args.raw_rate is None:
        return "raw PCM on stdin has no header: give its sample rate with --raw-rate"
    if args.raw_rate is not None and not stdin:
        return "--raw-rate is the rate of raw PCM on stdin (INPUT -); audio files say their own rate"
    if args.raw_rate is not None and args.raw_rate <= 0:
        return f"--raw-rate must be a positive number of samples per second, got {args.raw_rate}"
    if stdout and args.normalize == "peak":
        return "--normalize peak needs each track's peak over the whole input, which a stream to stdout never has"
    return None


def main(argv: list[str] | None = None) -> int:
    """Separate every input; returns the exit status. SIGTERM (a scheduler's or `timeout`'s stop) ends the run as
    Ctrl-C does: the current input's temporary files are removed, and the exit status says which signal."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    level = logging.WARNING if args.quiet else logging.INFO
    for name in ("separate", "speechsep"):
        logging.getLogger(name).setLevel(level)
    received = [signal.SIGINT]

    def stop(signum, frame):
        received[0] = signum
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one (schedulers send several) spares the cleanup
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    threads = torch.get_num_threads()
    try:
        return separate_all(args)
    except KeyboardInterrupt:
        done = "what was separated so far is on stdout" if args.output_dir == "-" else "tracks written are whole"
        logger.error(f"error: stopped by {signal.Signals(received[0]).name}: {done}, nothing is half-written")
        return 128 + received[0]
    finally:
        torch.set_num_threads(threads)  # main() called from Python leaves the caller's setting as it was
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def separate_all(args: argparse.Namespace) -> int:
    """What `main` does once the arguments are read."""
    problem = stream_problem(args)
    if problem:
        logger.error(f"error: {problem}")
        return 2
    if args.threads is not None and args.threads < 1:
        logger.error(f"error: --threads must be at least 1, got {args.threads}")
        return 2
    if args.threads or args.stream:
        torch.set_num_threads(args.threads or 1)
    try:
        defaults = SeparationOptions()
        options = SeparationOptions(
            window=defaults.window if args.window is None else args.window,
            hop=defaults.hop if args.hop is None else args.hop,
            batch_size=defaults.batch_size if args.batch_size is None else args.batch_size,
            output_rate=args.output_rate,
            normalize=args.normalize,
            progress=False if args.no_progress else None,
            shifts=defaults.shifts if args.shifts is None else args.shifts,
            mixture_consistency=args.mixture_consistency,
            precision=args.precision,
            keep_all_tracks=args.keep_all_tracks,
            talkers=args.talkers,
        )
        if args.stream:
            chunk_ms = StreamOptions.chunk_ms if args.chunk_ms is None else args.chunk_ms
            stream_options = StreamOptions(chunk_ms=chunk_ms, precision=args.precision, normalize=args.normalize)
        device = check_device(args.device)
        inference_precision(args.precision, device)  # refused before the model is loaded, not after
        model = load_separator(args.model, device=device)
        if args.stream:
            separator = StreamingFileSeparator(model, stream_options)
            logger.info(
                f"Streaming in chunks of {separator.chunk} samples ({1000 * separator.chunk / separator.sample_rate:g} "
                f"ms); the model's algorithmic latency is {separator.latency_ms:g} ms"
            )
        else:
            separator = FileSeparator(model, options)
        logger.info(
            f"Computing in {separator.precision} on {device}"
            + (" (--precision auto)" if args.precision == "auto" else "")
        )
    except RecipeError as err:
        logger.error(f"error: {err}")
        return 2
    if args.output_dir == "-":
        return separate_stdin(separator, args.raw_rate)

    try:  # before any separation: a folder that cannot be created fails now, not after an hour of work
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.error(f"error: cannot create --output-dir {args.output_dir} ({err.strerror or err})")
        return 2

    files, errors = expand_inputs(args.inputs, args.output_dir)
    for message in errors:
        logger.error(f"error: {printable(message)}")
    failed = len(errors)
    inputs = {path.resolve() for path in files}
    written_by = {}  # output stem -> the input that wrote it, so that no input overwrites another's outputs
    json_failed = False  # stdout could not take a JSON line: the tracks are still written, the lines stop
    for path in files:
        problem = output_problem(
            path, separator.output_paths(path, args.output_dir), inputs, written_by, args.overwrite
        )
        if problem:
            logger.error(f"error: {printable(path)}: {printable(problem)}")
            failed += 1
            continue
        try:
            result = separator.separate_file(path, args.output_dir, overwrite=args.overwrite)
        except Exception as err:  # whatever goes wrong with one input is one line for it; the others go on
            logger.debug(f"{printable(path)} failed", exc_info=True)
            logger.error(f"error: {printable(input_failure(path, err))}")
            failed += 1
            continue
        written_by[path.stem] = path
        if result.count is not None and not json_failed:
            json_failed = not print_record(result.record(path))
        if not result.outputs:
            logger.warning(f"{printable(path)}: no output holds a talker (silence?): no track written")
            continue
        logger.info(
            f"{printable(path)}: {result.seconds:.1f} s separated in {result.elapsed:.1f} s -> "
            f"{', '.join(printable(output) for output in result.outputs)}"
        )
    if failed:
        logger.error(f"{failed} of {len(files) + len(errors)} inputs failed")
    return 1 if failed or json_failed else 0


if __name__ == "__main__":
    sys.exit(main())
