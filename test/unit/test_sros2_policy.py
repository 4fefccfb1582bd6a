"""config/sros2_policy.xml: only the executor's enclave serves ~/enable, and the graph fits.

sros2 is not installable here (not on PyPI), so its XSLT is not run: the policy is parsed, and
names are resolved the way sros2 resolves them (`~` -> the profile's namespace and node, a
relative name -> the namespace). DDS permissions match names as fnmatch patterns.
"""
from fnmatch import fnmatchcase
from pathlib import Path
import re
import xml.etree.ElementTree as ElementTree

import pytest

from vla_insertion.core import topics
from vla_insertion.core.orchestration.launch_table import NODES

POLICY = Path(__file__).resolve().parents[2] / 'config' / 'sros2_policy.xml'
EXECUTOR = '/vla_insertion/chunk_executor'
SERVICES = ('/chunk_executor/enable', '/chunk_executor/reset_fault')


def resolve(name: str, ns: str, node: str) -> str:
    ns = ns if ns.endswith('/') else ns + '/'
    if name.startswith('/'):
        return name
    if name.startswith('~'):
        return ns + node + name[1:]
    return ns + name


def grants(kind: str, mode: str) -> dict[str, set[str]]:
    """Return enclave path -> the fully qualified names it is allowed `mode` on."""
    root = ElementTree.parse(POLICY).getroot()
    out = {}
    for enclave in root.iter('enclave'):
        names = out.setdefault(enclave.get('path'), set())
        for profile in enclave.iter('profile'):
            for block in profile.findall(kind):
                if block.get(mode) == 'ALLOW':
                    names |= {resolve(e.text.strip(), profile.get('ns'), profile.get('node'))
                              for e in block}
    return out


def allowed(patterns: set[str], name: str) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def test_the_policy_is_sros2_s_format_with_one_enclave_per_node():
    root = ElementTree.parse(POLICY).getroot()
    assert root.tag == 'policy' and root.get('version') == '0.2.0'
    paths = [e.get('path') for e in root.iter('enclave')]
    assert len(paths) == len(set(paths)) and EXECUTOR in paths
    for profile in root.iter('profile'):
        assert profile.get('ns') and profile.get('node')
        for block in profile:
            assert block.tag in ('topics', 'services', 'actions')
            assert set(block.attrib.values()) <= {'ALLOW', 'DENY'} and len(block) > 0


@pytest.mark.parametrize('service', SERVICES)
def test_only_the_executor_s_enclave_serves_its_services(service):
    servers = [path for path, names in grants('services', 'reply').items()
               if allowed(names, service)]
    assert servers == [EXECUTOR]
    callers = [path for path, names in grants('services', 'request').items()
               if allowed(names, service)]
    assert callers == ['/vla_insertion/operator'], 'the operator arms; no node does'


def test_each_topic_s_publisher_has_its_grant_and_the_recorder_hears_the_recorded_set():
    publish = grants('topics', 'publish')
    subscribe = grants('topics', 'subscribe')
    for topic in topics.TOPICS:
        name = resolve(topic.name, '/', '')
        owner = re.findall(r'\(([a-z_ ]+)\)', topic.description)[-1]
        if owner == 'bag_player':          # replays run on a development machine, unsecured
            continue
        # every node of the package; the operator and the cell's own publishers (its safety
        # relay, joint_state_broadcaster) have enclaves too, but publish no diagnostics
        ours = {f'/vla_insertion/{spec.name}' for spec in NODES if spec.ros_node}
        owners = ([p for p in publish if p in ours]
                  if owner == 'every node' else [f'/vla_insertion/{owner}'])
        for enclave in owners:
            assert allowed(publish[enclave], name), (enclave, name)
    for name in topics.RECORDED:
        probe = resolve(name.replace('*', 'zed_1'), '/', '')
        assert allowed(subscribe['/vla_insertion/bag_recorder'], probe), name
