"""The LightningModule every task trains with, its optimiser, and the keep-best callback."""

from __future__ import annotations

import time

import lightning as L
import torch

from serkit.errors import ConfigError
from serkit.models.registry import SERModel


class TaskModule(L.LightningModule):
    """Trains any SERModel on a task's loss and scores it with the task's validation metric.

    `task` gives `loss(outputs, target)`, `validation_metric(num_classes)` (a torchmetrics Metric
    whose `values()` are the `val_*` figures, `task.monitor` among them) and nothing else is asked of
    it here. `loss_hook(model, batch, task_loss) -> (loss, logs)` replaces the plain loss: neural
    structured learning (serkit.transfer.nsl) adds its neighbour term that way. With `ema_decay`, an
    averaged copy is what validation sees and what is kept: it smooths the epoch-to-epoch swings that
    small corpora give."""

    def __init__(self, model: SERModel, task, lr: float, weight_decay: float = 0.0, lr_decay=None,
                 ema_decay: float | None = None, loss_hook=None, head_lr: float | None = None):
        super().__init__()
        self.model, self.task, self.loss_hook = model, task, loss_hook
        self.lr, self.weight_decay, self.lr_decay, self.head_lr = lr, weight_decay, lr_decay, head_lr
        self.ema = None if ema_decay is None else torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.val_metric = task.validation_metric(model.num_classes)
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    @property
    def selected_model(self) -> SERModel:
        """The weights validation scores and KeepBest keeps: the EMA if enabled."""
        return self.model if self.ema is None else self.ema.module

    @property
    def epoch_train_loss(self) -> float | None:
        return self.epoch_loss_sum / self.epoch_loss_count if self.epoch_loss_count else None

    def on_train_epoch_start(self):
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    def training_step(self, batch, batch_idx):
        wave, mask, target, _, *extra = batch  # extra: token ids + attention mask, for audio+text models
        if self.loss_hook is None:
            loss = self.task.loss(self.model(wave, mask, *extra), target)
        else:
            loss, logs = self.loss_hook(self.model, batch, self.task.loss)
            for name, value in logs.items():
                self.log(name, value, on_step=False, on_epoch=True, batch_size=len(target), sync_dist=True)
        self.epoch_loss_sum += float(loss.detach()) * len(target)
        self.epoch_loss_count += len(target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target), sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validation_step(self, batch, batch_idx):
        wave, mask, target, _, *extra = batch
        self.val_metric.update(self.selected_model(wave, mask, *extra), target)

    def on_validation_epoch_end(self):
        values = self.val_metric.values()  # synced across DDP processes
        self.val_metric.reset()
        for name, value in values.items():
            self.log(name, value, prog_bar=name == self.task.monitor)

    def configure_optimizers(self):
        return adam(self.model, self.lr, self.weight_decay, self.lr_decay, self.head_lr)


def adam(model, lr: float, weight_decay: float = 0.0, lr_decay=None, head_lr: float | None = None):
    """Adam over the trainable parameters, optionally decayed stepwise per epoch (Lightning's format).
    With `head_lr`, the head (fc1, fc2, layer weights) learns at that rate and the backbone at `lr`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr is None:
        groups = [{"params": [p for _, p in named], "lr": lr}]
    else:
        head = [p for n, p in named if model.is_head_parameter(n)]
        body = [p for n, p in named if not model.is_head_parameter(n)]
        if not head:
            raise ConfigError(f"train.head_lr: this {type(model).__name__} has no trainable head parameters "
                              f"({', '.join(model.head_prefixes)}); remove head_lr")
        groups = [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]
    optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if lr_decay is None:
        return optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_decay.every_epochs, lr_decay.factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class KeepBest(L.Callback):
    """Keep the weights of the epoch with the best `task.monitor` (first one on ties), in memory: no
    pickled checkpoints on disk. Without validation data (`select=False`) the last epoch is kept.
    Also records the per-epoch history: epoch, train_loss, the task's validation figures, lr, seconds."""

    def __init__(self, task, log=None, select: bool = True):
        self.task, self.print_fn, self.select = task, log, select
        self.best_value: float | None = None
        self.best_row: dict | None = None
        self.best_epoch = -1
        self.state: dict | None = None
        self.history: list[dict] = []
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, module):
        self._epoch_start = time.perf_counter()

    def _record(self, trainer, module, values: dict | None) -> None:
        row = {"epoch": trainer.current_epoch + 1, "train_loss": module.epoch_train_loss,
               **{k: None if values is None else values[k] for k in self.task.history_keys},
               "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
               "seconds": time.perf_counter() - self._epoch_start}
        self.history.append(row)
        value = None if values is None else row[self.task.monitor]
        better = value is None or self.best_value is None or value > self.best_value
        if better:
            self.best_value, self.best_row, self.best_epoch = value, row, row["epoch"]
            self.state = {k: v.detach().cpu().clone() for k, v in module.selected_model.state_dict().items()}
        if self.print_fn is not None and trainer.is_global_zero:
            self.print_fn(f"epoch {row['epoch']}/{trainer.max_epochs}: "
                          + self.task.epoch_line(row, better and value is not None))

    def on_train_epoch_end(self, trainer, module):
        if not self.select:
            self._record(trainer, module, None)

    def on_validation_end(self, trainer, module):
        # runs after the module's on_validation_epoch_end has logged the figures
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self._record(trainer, module, {k: float(metrics[k]) for k in self.task.history_keys})
