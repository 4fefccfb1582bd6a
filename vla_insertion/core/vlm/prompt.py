"""The one chat prompt that shows the VLM every view and the task instruction.

The prompt follows Qwen2.5-VL's chat format: a system turn, then one user turn holding each view
(introduced by its name, in the configured order) and the instruction, then the opening of the
assistant turn, whose hidden states are the model's reading of the scene for the task. Each view
is one `<|vision_start|><|image_pad|><|vision_end|>` placeholder; the processor expands the pad
to the view's visual tokens (299 for 640x360).

`build_prompt` renders the text directly, so the feature contract (which includes the prompt)
is computed without a tokenizer. Model folders written by make_tiny_vlm carry `CHAT_TEMPLATE`,
which renders `chat_messages(...)` to exactly the same text (a unit test holds them together).
"""
from __future__ import annotations

SYSTEM_PROMPT = 'You are a helpful assistant.'
IMAGE_PLACEHOLDER = '<|vision_start|><|image_pad|><|vision_end|>'

# Jinja chat template in Qwen2.5-VL's format, images as placeholders (no video, no tools).
CHAT_TEMPLATE = r"""{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- else %}
{%- for item in message['content'] %}
{%- if item['type'] == 'image' %}
{{- '<|vision_start|><|image_pad|><|vision_end|>' }}
{%- elif item['type'] == 'text' %}
{{- item['text'] }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def chat_messages(view_names: tuple[str, ...], instruction: str) -> list[dict]:
    """Return the chat as messages: system turn, then every view by name and the instruction."""
    content: list[dict] = []
    for view in view_names:
        content += [{'type': 'text', 'text': f'{view}: '}, {'type': 'image'},
                    {'type': 'text', 'text': '\n'}]
    content.append({'type': 'text', 'text': f'Task: {instruction.strip()}'})
    return [{'role': 'system', 'content': [{'type': 'text', 'text': SYSTEM_PROMPT}]},
            {'role': 'user', 'content': content}]


def build_prompt(view_names: tuple[str, ...], instruction: str) -> str:
    """Render the prompt text, one image placeholder per view, ending with the assistant turn."""
    views = ''.join(f'{view}: {IMAGE_PLACEHOLDER}\n' for view in view_names)
    return (f'<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n'
            f'<|im_start|>user\n{views}Task: {instruction.strip()}<|im_end|>\n'
            f'<|im_start|>assistant\n')
