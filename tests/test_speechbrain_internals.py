"""speechsep.training.speechbrain_internals: SpeechBrain still hands the override arguments, untouched, to the
private method the recipe replaces, and still parses its own run options around them."""

from speechsep.training.speechbrain_internals import RunOptionsWithOverrides


class RecordingRunOptions(RunOptionsWithOverrides):
    received: list[list[str]] = []

    @staticmethod
    def overrides_to_yaml(overrides: list[str]) -> str:
        RecordingRunOptions.received.append(list(overrides))
        return "converted: true"


def test_speechbrain_hands_the_override_tokens_to_overrides_to_yaml():
    argv = ["config.yaml", "--device=cpu", "--output_folder=a=b", "--note", "a", "#2", "--precision", "bf16"]

    param_file, run_opts, overrides = RecordingRunOptions.from_command_line_args(argv)

    assert RecordingRunOptions.received == [["--output_folder=a=b", "--note", "a", "#2"]]
    assert overrides == "converted: true"
    assert param_file == "config.yaml"
    assert (run_opts["device"], run_opts["precision"]) == ("cpu", "bf16")
