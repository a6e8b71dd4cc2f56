#!/usr/bin/env python3
"""Recipe for training a single-channel speech separation model (SepFormer, ConvTasNet) with SpeechBrain.

One script for every corpus (WSJ0-2mix/3mix, WHAM!, WHAMR!, LibriMix, Aishell1Mix, custom trees, folders of
recordings of single talkers), for separation or enhancement; the differences live in hparams/. The script is the
Brain, the data pipeline and `main`; the run around them (checks, folders, stops) is in `speechsep.training.experiment`.

    torchrun --nproc_per_node=4 train.py hparams/sepformer.yaml --data_folder=/path/to/wsj0-mix/2speakers
    python train.py hparams/recordings.yaml --source_folder=/path/to/talkers   # <speaker>/<recording>.wav
"""

import logging
import math
import sys
from pathlib import Path
from typing import NamedTuple

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.distributed import if_main_process, run_on_main

from prepare_data import prepare_data
from speechsep.data import speaker_corpus
from speechsep.data.augment import fit_length, perturb_sources
from speechsep.data.dynamic_mixing import dynamic_mixing_dataset
from speechsep.data.manifests import separation_dataset
from speechsep.errors import RecipeError
from speechsep.evaluation import metrics
from speechsep.evaluation import results_folder as results
from speechsep.inference.model_folder import find_model
from speechsep.inference.separation import separate_each
from speechsep.models.filterbank import encoder_hop
from speechsep.training import experiment, preflight
from speechsep.training.budget import TrainingBudget
from speechsep.training.distributed import any_rank, gather_rows, shard_for_evaluation
from speechsep.training.losses import pit_si_snr_loss, threshold_by_loss
from speechsep.training.random_state import RandomState, loader_generator
from speechsep.training.schedulers import step_scheduler
from speechsep.training.statistics import EpochStatistics
from speechsep.training.stop_signals import StopRequest, loader_workers_leave_stop_signals

logger = logging.getLogger(__name__)


class Predictions(NamedTuple):
    """What `compute_forward` returns: estimates [batch, time, num_spks] and the signals to score them on."""

    est_sources: torch.Tensor
    sources: torch.Tensor
    mixture: torch.Tensor
    lengths: torch.Tensor
    est_sources_with_options: torch.Tensor | None = None  # TEST with test_shifts / test_mixture_consistency


class Separation(sb.Brain):
    """Trains and evaluates a mask-based separator made of `encoder`, `masknet` and `decoder` modules: SpeechBrain's
    hooks, with threshold-by-loss and counted skips in `fit_batch`, and every test metric in one pass."""

    train_dataset = None
    test_set_size = math.inf  # until the test loader is made (batches evaluated directly, as in the tests)
    scored = None  # what the test stage scores: the "epoch" and "checkpoint" or the "model", "data_folder", "test_data"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_request = StopRequest.for_this_process()  # train_and_test() gives it the one it installed
        clip = self.hparams.clip_grad_norm
        self.max_grad_norm = clip if clip > 0 else float("inf")  # what SpeechBrain's optimizers_step clips to
        self.epoch_stats = EpochStatistics()
        self.budget = TrainingBudget(minutes=self.hparams.train_budget_minutes)
        self.pending_backwards = 0
        if self.checkpointer is not None:  # optional: checkpoints of earlier versions have none
            self.checkpointer.add_recoverable("epoch_stats", self.epoch_stats, optional_load=True)
            self.checkpointer.add_recoverable("budget", self.budget, optional_load=True)
            self.checkpointer.add_recoverable("random_state", RandomState(), optional_load=True)

    # ---------------------------------------------------------------- the Brain's hooks
    def compute_forward(self, batch, stage):
        """The estimates and the signals they are scored against (at TRAIN, the augmented ones). TEST separates each
        utterance on its own, so that padding never changes a reported score (and again with test-time options);
        VALID stays batched: its loss only ranks checkpoints and drives the schedule."""
        mixture, sources, lengths, noise = self.batch_signals(batch)
        if stage == sb.Stage.TRAIN:
            mixture, sources, lengths = self.augment(mixture, sources, lengths, noise)
        if stage != sb.Stage.TEST:
            return Predictions(self.separate(mixture), sources, mixture, lengths)
        hp = self.hparams
        with_options = hp.test_shifts > 1 or hp.test_mixture_consistency
        est_sources, est_sources_with_options = separate_each(
            lambda utterance: self.separate(utterance).float(),  # float32 whatever --eval_precision computes in
            mixture,
            lengths,
            shifts=hp.test_shifts,
            hop=encoder_hop(self.modules.encoder) if with_options else 1,
            consistent=hp.test_mixture_consistency,
            with_options=with_options,
        )
        return Predictions(est_sources, sources, mixture, lengths, est_sources_with_options)

    def compute_objectives(self, predictions, batch, stage):
        """Per-example negative SI-SNR under the best permutation, padding excluded: shape [batch]. Configs for
        mixtures of fewer talkers than outputs name their `talker_loss` (`speechsep.training.losses.talker_loss`)."""
        est_sources, sources, lengths = predictions.est_sources, predictions.sources, predictions.lengths
        talker_loss = getattr(self.hparams, "talker_loss", None)  # configs of a fixed number of talkers have none
        if talker_loss is None:
            return pit_si_snr_loss(est_sources, sources, lengths)
        return talker_loss(est_sources, sources, predictions.mixture, lengths)

    def fit_batch(self, batch):
        """One training step with threshold-by-loss filtering and skipping of unusable batches."""
        should_step = self.step % self.grad_accumulation_factor == 0
        with self.no_sync(not should_step):
            with self.training_ctx:
                predictions = self.compute_forward(batch, sb.Stage.TRAIN)
            loss_per_example = self.compute_objectives(predictions, batch, sb.Stage.TRAIN)
            loss, skip_reason = self.filter_loss(loss_per_example)
            # Every rank must take the same decisions: one rank skipping a backward would hang the others'
            # gradient all-reduce, and a preemption checkpoint is a collective save.
            skip_elsewhere, stop = any_rank(skip_reason is not None, self.stop_request.requested)
            if skip_elsewhere and skip_reason is None:
                skip_reason = "skipped on another process"
            if skip_reason is None:
                self.scaler.scale(loss / self.grad_accumulation_factor).backward()
                self.pending_backwards += 1

        if skip_reason is not None:
            self.nonfinite_count += 1
            self.epoch_stats.batches_skipped += 1
            logger.info(f"Skipping batch ({skip_reason}); {self.nonfinite_count} skipped so far this epoch")
        if should_step:
            if self.pending_backwards > 0:
                self.optimizers_step()  # SpeechBrain's: unscale, clip to max_grad_norm, step, update, zero_grad
            else:
                self.optimizer.zero_grad(set_to_none=True)
            self.pending_backwards = 0

        if skip_reason is None:
            loss = loss.detach().cpu()
            self.epoch_stats.loss_sum += float(loss)
            self.epoch_stats.batches += 1
        if stop:  # after counting: this batch is trained, and the resumed run starts after it
            experiment.stop_at_checkpoint(self.checkpointer, self.stop_request, self.step)
        return loss if skip_reason is None else torch.tensor(0.0)

    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        """Loss for VALID; at TEST also every metric and the audio examples, in the same forward pass. A stop does not
        wait for the stage's end (a launcher's grace period may be shorter): the resumed run validates (tests) again."""
        if any_rank(self.stop_request.requested)[0]:  # one decision for every rank: each evaluates as many batches
            if stage == sb.Stage.TEST:
                experiment.stop_test_stage(self.stop_request, self.hparams.results_folder)
            self.step = self.epoch_steps  # SpeechBrain counts the validation batches in it
            experiment.stop_at_checkpoint(self.checkpointer, self.stop_request, self.step)
        with self.evaluation_ctx:
            predictions = self.compute_forward(batch, stage)
        loss = self.compute_objectives(predictions, batch, stage)
        self.eval_rows.extend({"snt_id": snt_id, "loss": float(value)} for snt_id, value in zip(batch.id, loss))
        if stage == sb.Stage.TEST:
            p, hp = predictions, self.hparams
            rows = metrics.test_scores(
                *(p.mixture, p.sources, p.est_sources, p.lengths, batch.id, p.est_sources_with_options),
                compute_stoi=hp.compute_stoi,
                sample_rate=hp.sample_rate,
                sdr_permutation=hp.sdr_permutation,
                compute_pesq=getattr(hp, "compute_pesq", False),  # runs recorded before it have none
                variable_talkers=getattr(hp, "talker_counts", None) is not None,
            )
            perms = [row.pop("perm") for row in rows]
            self.test_rows.extend(rows)
            if hp.save_audio:
                self.audio_examples.write(batch.id, p.mixture, p.sources, p.est_sources, p.lengths, perms)
        return loss.mean().detach().cpu()

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the best checkpoint, as SpeechBrain does, noting which for the results; set an earlier test's results
        aside, so that a test stage that does not finish neither destroys them nor passes them off as its own."""
        hp = self.hparams
        if self.checkpointer is not None:
            checkpoint = self.checkpointer.recover_if_possible(max_key=max_key, min_key=min_key)
            if checkpoint is None and self.test_only:
                experiment.exit_without_checkpoint(hp.save_folder)
            self.scored = results.scored_checkpoint(checkpoint, hp.epoch_counter.current)
        else:  # --test_only --pretrained_separator: the folder's own model
            self.scored = {"model": find_model(hp.pretrained_separator).description}
        # --test_only prepares its own manifest from its data_folder (`manifest_folder`): both say which test set
        self.scored.update(data_folder=str(hp.data_folder), test_data=str(hp.test_data), precision=self.eval_precision)
        run_on_main(results.set_aside_test_results, args=[Path(hp.results_folder)])  # before any rank writes audio

    def on_stage_start(self, stage, epoch=None):
        """Reset the per-stage counters (they are checkpointed, so an intra-epoch resume keeps them)."""
        self.eval_rows, self.test_rows = [], []
        hp = self.hparams
        self.audio_examples = results.AudioExamples(
            hp.results_folder, hp.sample_rate, hp.n_audio_to_save, self.test_set_size
        )
        self.pending_backwards = 0
        if stage != sb.Stage.TRAIN:
            return
        if self.step == 0:
            self.epoch_stats.reset()
        else:
            logger.info(f"Resuming epoch {epoch} after batch {self.step}")
        self.budget.start_epoch()
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)  # dynamic mixing draws new mixtures each epoch
            self.set_talker_count_weights(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log SI-SNR in positive dB, step the scheduler, keep the best checkpoint, write test results. VALID and TEST
        statistics are means over the examples of every rank (not the Brain's running mean of batch means)."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = self.epoch_stats.over_ranks().logged()
            self.epoch_steps = self.step  # what a stop during validation saves
            return

        rows = gather_rows(self.eval_rows)
        mean_loss = sum(row["loss"] for row in rows) / max(len(rows), 1)
        stats = {"si-snr": -mean_loss, "examples": len(rows)}
        if stage == sb.Stage.VALID:
            meta = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            self.budget.end_epoch()  # by rank 0's clock on every rank: the same stop and schedule below
            progress = self.budget.next_epoch_ends_at() if self.budget.minutes else None
            step_scheduler(self.hparams.lr_scheduler, self.optimizer, epoch, mean_loss, progress)
            experiment.end_if_budget_spent(self.budget, self.hparams.epoch_counter, epoch)  # before the checkpoint
            self.checkpointer.save_and_keep_only(
                meta={"si-snr": stats["si-snr"], "epoch": epoch},
                max_keys=["si-snr"],
                num_to_keep=self.hparams.num_ckpts_to_keep,
            )  # before the epoch's log line: an epoch whose checkpoint failed is trained again, and logged once
            experiment.log_stats(
                self.hparams.train_logger, stats_meta=meta, train_stats=self.train_stats, valid_stats=stats
            )
            if any_rank(self.stop_request.requested)[0]:
                raise experiment.StopRequested(f"epoch {epoch} is checkpointed")
        else:
            test_rows = gather_rows(self.test_rows)
            if if_main_process():
                test_record = self.hparams.test_record if self.test_only else None
                results.write_test_results(Path(self.hparams.results_folder), test_rows, self.scored, test_record)
            label = {"epoch loaded" if key == "epoch" else key: value for key, value in self.scored.items()}
            experiment.log_stats(self.hparams.train_logger, stats_meta=label, test_stats=metrics.main_means(test_rows))

    def make_dataloader(self, dataset, stage, **loader_kwargs):
        """SpeechBrain's loaders, whose workers leave the stop signals to this process and draw their seeds from a
        generator of their own (`random_state`); notes the training set (told each epoch) and the test set's size."""
        if stage == sb.Stage.TRAIN:
            self.train_dataset = dataset
        elif stage == sb.Stage.TEST:
            self.test_set_size = len(dataset)
        loader_kwargs.setdefault("generator", loader_generator(self.hparams.seed))
        return super().make_dataloader(dataset, stage, **loader_workers_leave_stop_signals(loader_kwargs))

    # ---------------------------------------------------------------- signals and separation
    def batch_signals(self, batch):
        """Move the batch to the device: mixture [B, T], sources [B, T, C], relative lengths [B], noise or None."""
        batch = batch.to(self.device)
        mixture, lengths = batch.mix_sig
        sources = torch.stack([getattr(batch, f"s{k}_sig").data for k in range(1, self.hparams.num_spks + 1)], dim=-1)
        noise = batch.noise_sig.data if "noise_sig" in batch else None
        return mixture, sources, lengths, noise

    def augment(self, mixture, sources, lengths, noise):
        """Training-time augmentation; the mixture is rebuilt whenever the sources change."""
        hp = self.hparams
        if hp.use_speedperturb or hp.use_rand_shift:
            sources, lengths = perturb_sources(
                sources,
                lengths,
                speed_perturb=hp.speed_perturb if hp.use_speedperturb else None,
                max_shift=hp.max_shift if hp.use_rand_shift else 0,
            )
            mixture = sources.sum(dim=-1)
            if noise is not None:
                mixture = mixture + fit_length(noise, mixture.shape[1])
        if hp.use_wavedrop:
            mixture = hp.drop_chunk(mixture, lengths)
            mixture = hp.drop_freq(mixture)
        return mixture, sources, lengths

    def separate(self, mixture):
        """Encoder -> one mask per speaker -> decoder, through `self.modules` so DDP and --compile apply.
        mixture: [batch, time] -> est_sources: [batch, time, num_spks], cropped/padded to the mixture length."""
        mixture_w = self.modules.encoder(mixture)  # [batch, N, frames]
        est_masks = self.modules.masknet(mixture_w)  # [num_spks, batch, N, frames]
        est_sources = torch.stack(
            [self.modules.decoder(mixture_w * est_masks[k]) for k in range(est_masks.shape[0])], dim=-1
        )
        return fit_length(est_sources, mixture.shape[1])

    def set_talker_count_weights(self, epoch):
        """Dynamic mixing's talker counts: `talker_count_warmup_weights` in the epochs whose middle falls within the
        first `talker_count_warmup_share` of the training (of N_epochs, or of the budget's minutes as the epochs so far
        predict it, whichever is further), `talker_count_weights` in the others and in the last one (under a budget:
        the one predicted last, which the first epoch cannot be)."""
        hp = self.hparams
        warmup_weights = getattr(hp, "talker_count_warmup_weights", None)
        if warmup_weights is None:
            return
        middle, is_last = (epoch - 0.5) / hp.N_epochs, epoch >= hp.N_epochs
        if self.budget.minutes:  # whichever ends the training first: the budget or N_epochs
            budget_seconds, epoch_seconds = 60.0 * self.budget.minutes, max(self.budget.epoch_seconds, default=0.0)
            middle = max(middle, (self.budget.spent_seconds + epoch_seconds / 2) / budget_seconds)
            is_last = is_last or self.budget.spent_seconds + 2 * epoch_seconds > budget_seconds  # as end_epoch will
        weights = warmup_weights if middle < hp.talker_count_warmup_share and not is_last else hp.talker_count_weights
        logger.info(f"Epoch {epoch}: talker counts {hp.talker_counts} drawn with weights {weights or 'all alike'}")
        self.train_dataset.set_talker_count_weights(weights)

    # ---------------------------------------------------------------- training helpers
    def filter_loss(self, loss_per_example):
        """Threshold-by-loss (`losses.threshold_by_loss`), counted in the epoch's statistics."""
        hp = self.hparams
        threshold = hp.threshold if hp.threshold_byloss else None
        loss, skip_reason, dropped = threshold_by_loss(loss_per_example, threshold, hp.loss_upper_lim)
        self.epoch_stats.examples_seen += loss_per_example.numel()
        self.epoch_stats.examples_filtered += dropped
        return loss, skip_reason


def training_dataset(hparams):
    """Random crops of the training manifest, or mixtures made on the fly from a source pool."""
    if hparams["dynamic_mixing"]:
        return dynamic_mixing_dataset(
            hparams["base_folder_dm"],
            hparams["sample_rate"],
            noise_folder=hparams["noise_folder_dm"],
            cache_dir=Path(hparams["save_folder"]) / "dynamic_mixing_cache",
            num_spks=hparams["num_spks"],
            segment_len=hparams["training_signal_len"],
            epoch_len=hparams["dm_epoch_len"],
            level_scheme=hparams["dm_level_scheme"],
            speed_perturb=hparams["dm_speed_perturb"],
            seed=hparams["seed"],
            rooms=hparams.get("dm_rooms"),  # runs recorded before dm_rooms have none
            talker_counts=hparams.get("talker_counts"),  # configs of a fixed number of talkers have none
            talker_count_weights=hparams.get("talker_count_weights"),
        )
    return separation_dataset(
        hparams["train_data"],
        hparams["data_folder"],
        hparams["num_spks"],
        hparams["use_wham_noise"],
        segment_len=hparams["training_signal_len"],
        random_crop=True,
        seed=hparams["seed"],
        min_talkers=preflight.min_talkers(hparams),
    )


def dataio_prep(hparams, test_only=False, train=None):
    """The train/valid/test datasets (`train`: the training set already made); with `test_only`, the test set alone."""
    common = dict(
        data_root=hparams["data_folder"],
        num_spks=hparams["num_spks"],
        with_noise=hparams["use_wham_noise"],
        min_talkers=preflight.min_talkers(hparams),
    )
    if test_only:
        return None, None, separation_dataset(hparams["test_data"], **common)
    train = training_dataset(hparams) if train is None else train
    return train, *(separation_dataset(hparams[key], **common) for key in ("valid_data", "test_data"))


def prepare_experiment(argv):
    """Config, output folder and data, checked before anything is built or written; the run's record is written once
    they all passed. Returns (hparams, run_opts, (train, valid, test)); bad input raises RecipeError naming it."""
    hparams, run_opts, record, min_samples = experiment.checked_experiment(argv, __file__)
    test_only = run_opts["test_only"]
    if not hparams["skip_prep"]:  # with --test_only too, the test manifest alone
        if "source_folder" in hparams:  # recordings of single talkers: split by talker, valid/test mixtures made
            run_on_main(speaker_corpus.prepare_for_run, args=[hparams, test_only])
        options = experiment.preparation_options(hparams, test_only, min_samples)
        run_on_main(prepare_data, kwargs=options)
        if test_only:
            experiment.use_prepared_test_manifest(hparams, options["save_folder"])
    pool_dataset = None
    if hparams["dynamic_mixing"] and not test_only:  # the main process indexes (and resamples) the pool, once;
        pool_dataset = run_on_main(training_dataset, args=[hparams])  # every process gets the dataset it made
    experiment.keep_record(hparams, record, test_only)
    return hparams, run_opts, dataio_prep(hparams, test_only, pool_dataset)


def main(argv):
    """Parse the command line, prepare the data, train, and evaluate on the test set. A file that cannot be written
    (a full disk, a quota) ends the run with one `error:` line naming it, as does any other OSError."""
    logging.raiseExceptions = False  # a log file on a full disk: the error line below says so, once
    try:
        return train_and_test(argv)
    except (OSError, RecipeError) as err:  # CheckpointWriteError and OutputError too
        sys.exit(f"error: {experiment.error_text(err)}")


def train_and_test(argv):
    """`main` without its handling of write failures."""
    # Preemption / time limit (SIGTERM, or SIGUSR1): a request from the start, acted on where the run can stop
    stop_request = StopRequest.for_this_process()
    stop_request.install_handlers()
    try:
        hparams, run_opts, (train_data, valid_data, test_data) = prepare_experiment(argv)
        modules, checkpointer = experiment.starting_model(hparams, run_opts["test_only"])
    except RecipeError as err:
        sys.exit(f"error: {err}")

    separator = Separation(
        modules=modules,
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    separator.stop_request = stop_request
    experiment.stop_if_requested_before_work(stop_request, run_opts["test_only"])
    experiment.log_effective_batch_size(hparams["batch_size"], separator.grad_accumulation_factor)
    if not run_opts["test_only"]:
        with experiment.exit_on_stop(checkpointer):
            separator.fit(
                separator.hparams.epoch_counter,
                train_data,
                valid_data,
                train_loader_kwargs={**hparams["dataloader_opts"], "collate_fn": PaddedBatch},
                valid_loader_kwargs=shard_for_evaluation(hparams["dataloader_opts_valid"], valid_data),
            )
        experiment.exit_if_untrained(separator)
    with experiment.exit_on_stop(checkpointer), experiment.naming_earlier_test_results(hparams["results_folder"]):
        separator.evaluate(
            test_data,
            max_key="si-snr",
            test_loader_kwargs=shard_for_evaluation(hparams["dataloader_opts_test"], test_data),
        )
    return separator


if __name__ == "__main__":
    main(sys.argv[1:])
