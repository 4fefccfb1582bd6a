"""The fast VLM preprocessing against the stock Qwen2.5-VL processor, and the torch.compile path.

`FastPreprocessor` must give the model the same tensors as the stock processor (pixel values
within 1e-5 in float32, ids equal) for any size, view count and instruction; the torch bicubic
resize must equal Pillow's to the bit in both of Pillow's pass orders; the extractor's features
must not depend on the path. Random-noise images are the hard case for a resize (every pixel
differs from its neighbours), so most cases use them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import io
import os

import numpy as np
from PIL import Image
import pytest
import torch

from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.data import CameraFrame
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.vlm import compile as vlm_compile
from vla_insertion.core.vlm import resample
from vla_insertion.core.vlm.extractor import VlmFeatureExtractor, VlmInputError
from vla_insertion.core.vlm.model import load_processor
from vla_insertion.core.vlm.preprocess import FastPreprocessor
from vla_insertion.core.vlm.prompt import build_prompt
from vla_insertion.core.vlm.source import resolve_model

os.environ.setdefault('HF_HUB_OFFLINE', '1')
torch.set_num_threads(1)
VIEWS = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')


def noise(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def scene(seed: int, width: int, height: int) -> Image.Image:
    """Smooth shading with a dark box: saturated and flat areas, as in camera images."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height),
                                                       Image.BICUBIC)).copy()
    pixels[height // 3: height // 2, width // 4: width // 2] = 0
    return Image.fromarray(pixels)


@pytest.fixture(scope='module')
def processor(tiny_vlm_dir):
    return load_processor(resolve_model(str(tiny_vlm_dir), download=False))


@pytest.fixture(scope='module')
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def assert_same_inputs(stock, fast) -> None:
    assert set(fast) == set(stock), (sorted(fast), sorted(stock))
    for key, expected in stock.items():
        got = fast[key].cpu()
        assert got.shape == expected.shape and got.dtype == expected.dtype, key
        if expected.dtype.is_floating_point:
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0.0)
        else:
            assert torch.equal(got, expected), key


# --- FastPreprocessor == the stock processor ------------------------------------------------

CASES = [  # (width, height, views, instruction, image maker)
    (640, 360, 5, 'Insert the needle into the target.', noise),   # the default: 644x364
    (640, 360, 1, 'Insert the needle into the target.', scene),
    (320, 240, 3, 'Pick up the peg.', noise),                     # rounds down to 308 wide
    (100, 60, 2, 'Place it   ', scene),                           # instruction is stripped
    (644, 364, 2, 'No resize at all.', noise),                    # already multiples of 28
    (37, 29, 1, 'Tiny view: min_pixels scales it up.', noise),
    (1280, 720, 1, 'A large view.', scene),
]


@pytest.mark.parametrize('on_device', [False, True], ids=['pillow-resize', 'torch-resize'])
@pytest.mark.parametrize('width,height,views,instruction,make', CASES,
                         ids=[f'{w}x{h}x{v}' for w, h, v, _, _ in CASES])
def test_fast_inputs_equal_the_stock_processor(processor, pool, width, height, views,
                                               instruction, make, on_device):
    if on_device and width * height > 700 * 400:
        pytest.skip('the float64 torch resize is slow on the CPU; 640x360 covers it')
    images = [make(seed, width, height) for seed in range(views)]
    prompt = build_prompt(VIEWS[:views], instruction)
    stock = processor(text=[prompt], images=images, return_tensors='pt')
    fast = FastPreprocessor(processor, prompt, 'cpu', pool=pool, resize_on_device=on_device)
    assert_same_inputs(stock, fast(images))
    # again: the cached ids and the reused buffers give the same result a second time,
    # also after a call on other images
    fast([make(seed + 10, width, height) for seed in range(views)])
    assert_same_inputs(stock, fast(images))


def test_views_of_different_sizes_keep_their_order(processor):
    # two views of one size around another: each keeps its own pixels
    images = [noise(0, 640, 360), noise(1, 640, 360), noise(2, 320, 240), noise(3, 644, 364)]
    prompt = build_prompt(VIEWS[:4], 'Mixed sizes.')
    stock = processor(text=[prompt], images=images, return_tensors='pt')
    assert_same_inputs(stock, FastPreprocessor(processor, prompt)(images))


def test_token_ids_are_made_once_per_image_grid(processor):
    fast = FastPreprocessor(processor, build_prompt(VIEWS[:2], 'Cache.'))
    first = fast([noise(0, 640, 360)] * 2)['input_ids']
    assert fast([noise(1, 640, 360)] * 2)['input_ids'] is first
    other = fast([noise(0, 320, 240)] * 2)['input_ids']
    assert other.shape[1] < first.shape[1] and len(fast._text) == 2


def test_the_timings_split_resize_from_the_rest(processor):
    fast = FastPreprocessor(processor, build_prompt(VIEWS[:1], 'Time it.'))
    timings = {'resize': 0.0, 'processor': 0.0}
    fast([noise(0, 640, 360)], timings)
    assert timings['resize'] > 0.0 and timings['processor'] > 0.0


def test_non_rgb_views_are_refused(processor):
    fast = FastPreprocessor(processor, build_prompt(VIEWS[:1], 'Grey.'))
    with pytest.raises(ValueError, match='RGB'):
        fast([noise(0, 64, 64).convert('L')])


def test_the_float64_rescale_fallback_gives_the_same_values(processor):
    # The float32 division equals the processor's float64 rescale for 1/255; the fallback must
    # give the same values for any factor.
    fast = FastPreprocessor(processor, build_prompt(VIEWS[:1], 'Rescale.'))
    image = torch.from_numpy(np.asarray(noise(3, 644, 364)).copy())[None]
    divided = fast.pixels(image).clone()      # the next call reuses the output buffer
    fast._divide = False
    torch.testing.assert_close(fast.pixels(image), divided, atol=0.0, rtol=0.0)


# --- the torch bicubic resize == Pillow ------------------------------------------------------

RESIZES = [  # (in w, in h, out w, out h)
    (640, 360, 644, 364), (320, 240, 308, 252), (100, 50, 112, 56), (64, 48, 40, 30),
    (640, 480, 644, 476),    # height shrinks, width grows: Pillow 13 runs vertical first
    (300, 600, 280, 620), (500, 400, 600, 300), (200, 160, 171, 100), (200, 160, 170, 100),
    (17, 13, 5, 3), (3, 5, 40, 70), (640, 360, 640, 364), (640, 360, 644, 360),
]


@pytest.mark.parametrize('size', RESIZES, ids=[f'{a}x{b}-{c}x{d}' for a, b, c, d in RESIZES])
def test_the_torch_bicubic_resize_equals_pillow(size):
    width, height, out_width, out_height = size
    images = [noise(seed, width, height) for seed in range(2)]
    expected = np.stack([np.asarray(i.resize((out_width, out_height), Image.BICUBIC))
                         for i in images])
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images]))
    got = resample.resize_bicubic(batch, out_width, out_height).numpy()
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_both_pass_orders_are_exercised():
    orders = {resample.vertical_first(*size) for size in RESIZES}
    assert orders == {True, False}
    assert resample.vertical_first(200, 160, 171, 100)        # 60 > 2 * 29
    assert not resample.vertical_first(200, 160, 170, 100)    # 60 = 2 * 30


def test_the_runtime_check_detects_a_different_resize(monkeypatch):
    assert resample.matches_pillow(64, 48, 70, 52)
    monkeypatch.setattr(resample, 'vertical_first', lambda *size: True)  # the wrong order
    assert not resample.matches_pillow(64, 48, 70, 52)


def test_the_resize_refuses_other_layouts():
    with pytest.raises(ValueError, match='uint8'):
        resample.resize_bicubic(torch.zeros(1, 8, 8, 3), 4, 4)


# --- the extractor: same features on both paths ---------------------------------------------

def jpeg(seed: int, width: int = 320, height: int = 180) -> bytes:
    buffer = io.BytesIO()
    scene(seed, width, height).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def observation(data: dict[str, bytes] | None = None) -> VlmObservation:
    data = data or {v: jpeg(i) for i, v in enumerate(VIEWS)}
    return VlmObservation(frames={v: CameraFrame(view=v, stamp_s=10.0, data=d)
                                  for v, d in data.items()}, sequence=1)


@pytest.fixture(scope='module')
def extractors(tiny_vlm_dir):
    base = VlmConfig(model=str(tiny_vlm_dir), device='cpu', torch_threads=1, warmup_runs=0)
    fast = VlmFeatureExtractor(base.__class__(**{**base.__dict__, 'preprocess_threads': 3}))
    stock = VlmFeatureExtractor(base.__class__(**{**base.__dict__,
                                                  'preprocessing': 'processor'}))
    yield fast, stock
    fast.close()


def test_the_features_do_not_depend_on_the_preprocessing_path(extractors):
    fast, stock = extractors
    assert (fast.preprocessing, stock.preprocessing) == ('fast', 'processor')
    assert fast.contract == stock.contract
    obs = observation()
    a, b = fast.infer(obs).features, stock.infer(obs).features
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.9999
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert {'decode_ms', 'resize_ms', 'processor_ms', 'forward_ms'} <= set(fast.last_timings)


def test_parallel_decoding_keeps_the_view_order_and_names_a_bad_view(extractors):
    fast, stock = extractors
    data = {v: jpeg(4 - i) for i, v in enumerate(VIEWS)}          # another order of images
    np.testing.assert_allclose(fast.infer(observation(data)).features,
                               stock.infer(observation(data)).features, atol=1e-5, rtol=1e-5)
    data['zed_3'] = b'\xff\xd8 not a jpeg'
    with pytest.raises(VlmInputError, match='zed_3'):
        fast.infer(observation(data))


# --- config and compile -------------------------------------------------------------------

@pytest.mark.parametrize('change', [{'preprocessing': 'gpu'}, {'preprocess_threads': 0},
                                    {'torch_compile': 'yes'}, {'compile_mode': 'max-autotune'}])
def test_bad_preprocessing_and_compile_settings_are_refused(change):
    with pytest.raises(ConfigError, match=next(iter(change))):
        VlmConfig(**change)


def test_auto_compile_stays_off_until_a_gpu_measured_it(monkeypatch):
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert vlm_compile.COMPILE_HELPS_ON_CUDA is None
    assert not vlm_compile.resolve_compile('auto', cuda)
    assert not vlm_compile.resolve_compile('auto', cpu)
    assert vlm_compile.resolve_compile('on', cpu) and not vlm_compile.resolve_compile('off', cuda)
    monkeypatch.setattr(vlm_compile, 'COMPILE_HELPS_ON_CUDA', True)
    assert vlm_compile.resolve_compile('auto', cuda)
    assert not vlm_compile.resolve_compile('auto', cpu)


def test_compile_on_wraps_the_vision_tower_and_the_language_model(tiny_vlm_dir):
    # Construction only: the first inference would compile with inductor (minutes here).
    config = VlmConfig(model=str(tiny_vlm_dir), device='cpu', warmup_runs=0, torch_compile='on',
                       view_names=('oak',))
    extractor = VlmFeatureExtractor(config)
    model = extractor.model.model
    assert extractor.compiled
    assert model.visual._compiled_call_impl is not None
    assert model.language_model._compiled_call_impl is not None
    vlm_compile.uncompile_model(extractor.model)
    assert model.visual._compiled_call_impl is None


def test_a_compiled_forward_gives_the_eager_features(tiny_vlm_dir):
    # Dynamo captures the graphs; the 'eager' backend runs them without generating code, so
    # the compiled path is exercised in ~10 s instead of inductor's minutes on this CPU.
    config = VlmConfig(model=str(tiny_vlm_dir), device='cpu', warmup_runs=0, torch_compile='off',
                       view_names=('oak',), image_width=112, image_height=56)
    extractor = VlmFeatureExtractor(config)
    images = [noise(0, 112, 56)]
    eager = extractor.features_from_images(images)
    vlm_compile.compile_model(extractor.model, 'default', backend='eager')
    try:
        compiled = extractor.features_from_images(images)
    finally:
        vlm_compile.uncompile_model(extractor.model)
        torch._dynamo.reset()
    np.testing.assert_allclose(compiled, eager, atol=1e-5, rtol=1e-5)
