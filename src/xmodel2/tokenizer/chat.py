"""ChatML, the chat format of Xmodel-2: `<|im_start|>{role}\n{content}<|im_end|>\n` per message."""

from __future__ import annotations

from xmodel2.errors import UserError
from xmodel2.tokenizer.symbols import IM_END, IM_START

ROLES = ("system", "user", "assistant", "tool")

# The same format as a Jinja template, for tokenizer_config.json (what Hugging Face tools read).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
)


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    parts = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(f"chat message {index}: expected an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"chat message {index}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise UserError(f"chat message {index}: 'content' must be a string")
        parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)
