"""The console shows a short table of the key numbers per log (step, loss, CE, each
part, lr); every logged key still reaches the Trainer's history and metrics.json."""

from __future__ import annotations

import re

import pytest

from test_trainer import _config, _trainer


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_training_logs_are_a_short_table_and_the_history_keeps_every_key(tmp_path, capsys, disable_tqdm):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    tr = _trainer(_config(tmp_path, objective="kl+tidal", max_steps=4, logging_steps=2, disable_tqdm=disable_tqdm))
    names = [type(c).__name__ for c in tr.callback_handler.callbacks]
    assert ("TidePrinterCallback" if disable_tqdm else "TideProgressCallback") in names
    assert not any(type(c) in (PrinterCallback, ProgressCallback) for c in tr.callback_handler.callbacks)
    tr.train()
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "{'loss'" not in text and "stats/" not in text and "lambda/" not in text, text
    lines = [re.sub(r"^.*\r", "", x).strip() for x in captured.out.splitlines()]
    header = lines.index("step       loss         ce         kl      tidal         lr")
    rows = [x.split() for x in lines[header + 1 : header + 3]]
    steps = [h for h in tr.state.log_history if "loss" in h]
    assert [r[0] for r in rows] == ["2/4", "4/4"] and len(steps) == 2
    for row, logged in zip(rows, steps):
        assert [float(v) for v in row[1:5]] == pytest.approx(
            [logged["loss"], logged["ce"], logged["kl"], logged["tidal"]], abs=5e-5)
        assert float(row[5]) == pytest.approx(logged["learning_rate"], rel=1e-2)
        # the history (what metrics.json writes) keeps the full log
        assert {"grad_norm", "epoch", "progress", "lambda/tidal"} <= set(logged) and any(k.startswith("stats/") for k in logged)
    assert any(x.startswith("train_runtime ") and "train_loss" in x for x in lines)


def test_the_table_repeats_its_header_when_the_columns_change():
    from tide_plugin.training.report import ConsoleTable, console_numbers

    table = ConsoleTable()
    first = table.lines(console_numbers({"loss": 1.0, "calm": 0.5, "ce": 0.5, "learning_rate": 1e-4}, 1, 10))
    assert first[0].split() == ["step", "loss", "ce", "calm", "lr"] and first[1].split() == ["1/10", "1.0000", "0.5000",
                                                                                                  "0.5000", "1.00e-04"]
    assert len(table.lines(console_numbers({"loss": 2.0, "calm": 0.5, "ce": 1.5, "learning_rate": 1e-4}, 2, 10))) == 1
    assert len(table.lines(console_numbers({"loss": 2.0, "ce": 2.0, "learning_rate": 1e-4}, 3, 10))) == 2
