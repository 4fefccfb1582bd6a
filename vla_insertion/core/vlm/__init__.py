"""The vision-language model: Qwen2.5-VL features for the action expert, free of ROS.

Light modules (no torch, importable anywhere): `architecture` (published and tiny configs),
`source` (model folders, VlmLoadError), `prompt`, `contract` (`feature_contract_for`),
`selection` (which frames to run on), `images` (decode and resize
views). Heavy modules (torch + transformers): `model` (load,
random build, tiny model writer), `reduction`, `extractor` (VlmFeatureExtractor, DelayedVlm),
`worker` (VlmWorker: the node's scheduler thread, VlmStats).
"""
from vla_insertion.core.vlm.contract import feature_contract_for
from vla_insertion.core.vlm.source import VlmLoadError

__all__ = ['feature_contract_for', 'VlmLoadError']
