"""The recipe's only use of a SpeechBrain private name, kept here so that a SpeechBrain upgrade is checked in one
place (tests/test_speechbrain_internals.py).

`RunOptions.from_command_line_args` turns the command-line overrides into YAML with its private static method
`_convert_to_yaml`, which joins them at every `=` and pastes the values as they are (`--output_folder=a=b`
becomes `a b`, `--note=a #2` becomes `a`). SpeechBrain offers no public hook for that step, and its parser
(which decides which arguments are run options and which are overrides) is private too, so the recipe
replaces that one method.
"""

from speechbrain.utils.run_opts import RunOptions


class RunOptionsWithOverrides(RunOptions):
    """SpeechBrain's run options, with the override arguments (as `--key=value` / `--key value...` tokens that
    SpeechBrain's parser did not take) turned into YAML by `overrides_to_yaml`, which subclasses define."""

    @staticmethod
    def overrides_to_yaml(overrides: list[str]) -> str:
        raise NotImplementedError

    @classmethod
    def _convert_to_yaml(cls, overrides: list[str]) -> str:
        return cls.overrides_to_yaml(overrides)
