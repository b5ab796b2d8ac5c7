"""Render chat messages into a prompt with the model's Jinja chat template.

The template comes from the GGUF (``tokenizer.chat_template``); models without one get ChatML.
Rendering is sandboxed, like transformers' and llama-cpp-python's chat formatters.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pyllamaam.errors import ConfigError

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplate:
    """A compiled chat template; ``render(messages)`` gives the prompt text."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as err:
            raise ConfigError(f"the model's chat template does not compile: {err}") from err

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        def raise_exception(message: str) -> None:
            raise ConfigError(f"the chat template refused the messages: {message}")

        try:
            return self._template.render(
                messages=messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=raise_exception,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
            )
        except ConfigError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as err:
            raise ConfigError(f"the chat template failed on these messages: {err}") from err
