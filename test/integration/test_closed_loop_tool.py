"""closed_loop --backend sim: the tool around core/sim/loop.py's loops.

Mirrors tools/closed_loop.py: the learned policy (the tiny VLM, an untrained expert) and the
scripted reference, one episode each, scored into closed_loop.json / .md / .png; an added VLM
delay widens the expert's feature-age limit instead of refusing every tick.
"""
import json

import pytest

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.vlm import feature_contract_for
from vla_insertion.tools import closed_loop

PARAMS = """/**/vlm_node:
  ros__parameters:
    view_names: [zed_1, oak]
    image_width: 112
    image_height: 56
    torch_threads: 1
    warmup_runs: 0
"""


@pytest.fixture(scope='module')
def setup(tiny_vlm_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp('closed_loop_tool')
    params = folder / 'params.yaml'
    params.write_text(PARAMS)
    config = VlmConfig(model=str(tiny_vlm_dir), view_names=('zed_1', 'oak'), image_width=112,
                       image_height=56)
    checkpoint = make_untrained_checkpoint(folder / 'expert', feature_contract_for(config),
                                           preset='small')
    return folder, params, checkpoint, tiny_vlm_dir


def run(setup, name: str, *extra: str) -> dict:
    folder, params, checkpoint, vlm = setup
    out = folder / name
    code = closed_loop.main(['--episodes', '1', '--seed', '3', '--params-file', str(params),
                             '--vlm-model', str(vlm), '--checkpoint', str(checkpoint),
                             '-o', str(out), *extra])
    assert code == 0
    assert (out / 'closed_loop.md').is_file() and (out / 'closed_loop.png').is_file()
    report = json.loads((out / 'closed_loop.json').read_text())
    [result] = report['results'].values()
    return result


def test_the_reference_inserts(setup):
    result = run(setup, 'reference', '--policy', 'reference')
    assert result['episodes'] == 1 and result['success_rate'] == 1.0


def test_the_learned_policy_runs_with_features_as_old_as_the_added_delay(setup):
    fresh = run(setup, 'fresh')
    delayed = run(setup, 'delayed', '--vlm-delay', '0.8')
    for result in (fresh, delayed):
        assert result['episodes'] == 1 and result['outcomes']
        # once features exist, a chunk every 0.1 s that lasts 0.8 s: the plan never runs dry
        assert result['starved'] == 0 and result['chunk_delay_s_mean'] > 0.0
    assert 0.38 <= fresh['feature_age_s_mean'] < 1.0
    # 0.38 s latency + 0.8 s delay: older than the 1 s limit, which grows by the delay, so the
    # features are used. (The slowed VLM runs back to back: ages reach 2 x 1.18 s late in each
    # of its periods, past the widened 1.8 s, and those ticks are refused; an untrained expert
    # is never armed, so the episode runs to its timeout and meets them.)
    assert 1.18 <= delayed['feature_age_s_mean'] <= 1.8
    [episode] = delayed['per_episode']
    assert 0 < delayed['refused'].get('features_too_old', 0) < episode['chunks']
