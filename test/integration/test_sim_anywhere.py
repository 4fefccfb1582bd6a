"""`sim:=true` from any folder: the launch's arguments find or write the demo's models.

`ros2 launch ... sim:=true` run outside the checkout used to start the expert on a checkpoint
folder relative to the working directory and the VLM on a hub id: both exited. The launch file
now calls `launch_table.prepare_arguments`, tested here from an empty folder with its own
cache: the tiny VLM and a matching untrained checkpoint are written under the cache once, used
as absolute paths, found the second time, and the checkpoint follows an `instruction:=`.
"""
import os
from pathlib import Path

import pytest

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.expert.checkpoint import load_checkpoint
from vla_insertion.core.orchestration import launch_table as lt
from vla_insertion.core.params import load_config
from vla_insertion.core.vlm import feature_contract_for

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / 'config' / 'vla_insertion.yaml'
pytestmark = pytest.mark.slow         # the programs that write the models run


def test_sim_finds_or_writes_the_demo_models_from_any_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / 'somewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    # the programs that write the models run from this checkout's sources
    monkeypatch.setenv('PYTHONPATH', f'{ROOT}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    args = {a.name: a.default for a in lt.LAUNCH_ARGUMENTS}
    args['sim'] = 'true'

    prepared, notes = lt.prepare_arguments(args, PARAMS)
    vlm, checkpoint = Path(prepared['vlm_model']), Path(prepared['checkpoint'])
    assert vlm.is_absolute() and checkpoint.is_absolute()
    assert vlm.is_relative_to(tmp_path / 'cache' / 'vla_insertion')
    assert any('written now: make_tiny_vlm, make_untrained_checkpoint' in n for n in notes), notes
    assert prepared['allow_untrained_vlm'] == 'true'       # the sim has no real VLM weights
    contract = feature_contract_for(load_config(VlmConfig, 'vlm_node', PARAMS,
                                                overrides={'model': str(vlm)}))
    assert load_checkpoint(checkpoint).meta.contract_digest == contract.digest
    assert not list(elsewhere.iterdir()), 'nothing is written into the working directory'

    again, notes = lt.prepare_arguments(args, PARAMS)          # found: nothing to write
    assert again == prepared and not any('written now' in n for n in notes)

    args['instruction'] = 'Insert the peg into the hole.'     # the checkpoint follows it
    prepared, notes = lt.prepare_arguments(args, PARAMS)
    assert notes[0].endswith('(written now: make_untrained_checkpoint)'), notes
    contract = feature_contract_for(load_config(VlmConfig, 'vlm_node', PARAMS, overrides={
        'model': str(vlm), 'instruction': args['instruction']}))
    assert load_checkpoint(prepared['checkpoint']).meta.contract_digest == contract.digest
