"""How an example's prompt and response become the text a model reads: plain, or the checkpoint's chat template.

`plain` (the default) is the prompt, a newline, then the response. `chat` renders the conversation
with the Jinja template an instruction checkpoint carries in tokenizer_config.json, as Hugging Face's
`apply_chat_template` does (a sandboxed environment, trimmed blocks, `raise_exception`): the prompt is
the user's turn with the assistant's turn opened; the response is what the template adds for the
assistant's turn. The trainer, the dry-run plan and evaluation all format examples here, so they agree.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from app.contract import model_catalog

PLAIN, CHAT = "plain", "chat"
PROMPT_FORMATS = (PLAIN, CHAT)
# The prompt and the response are joined by this separator in the plain format.
PROMPT_SEPARATOR = "\n"


class PromptFormat(Protocol):
    def prompt(self, text: str) -> str: ...
    def example(self, prompt: str, response: str) -> tuple[str, str]: ...


class PlainFormat:
    """The prompt, a newline, the response."""

    def prompt(self, text: str) -> str:
        return text + PROMPT_SEPARATOR

    def example(self, prompt: str, response: str) -> tuple[str, str]:
        return self.prompt(prompt), response


class TemplateError(ValueError):
    """A chat template that cannot be rendered."""


def _raise(message: str):
    raise TemplateError(message)


class ChatFormat:
    """A checkpoint's chat template: the user's turn, then the assistant's."""

    def __init__(self, template: str, eos_token: str = ""):
        from jinja2 import TemplateError as JinjaError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=["jinja2.ext.loopcontrols"])
        environment.globals.update(raise_exception=_raise, strftime_now=lambda f: datetime.now().strftime(f))
        self._jinja_error = JinjaError
        try:
            self._template = environment.from_string(template)
        except JinjaError as exc:
            raise TemplateError(f"the chat template does not parse: {exc}") from None
        self._eos_token = eos_token

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        # bos_token is left empty: the tokenizer's BOS id is added once, before the text, as in plain.
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token="", eos_token=self._eos_token)
        except (self._jinja_error, TypeError, ValueError) as exc:
            raise TemplateError(f"the chat template fails: {exc}") from None

    def prompt(self, text: str) -> str:
        return self._render([{"role": "user", "content": text}], add_generation_prompt=True)

    def example(self, prompt: str, response: str) -> tuple[str, str]:
        """(the text the model reads, the text it learns to answer): each rendered once."""
        opened = self.prompt(prompt)
        whole = self._render([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                             add_generation_prompt=False)
        # A template whose conversation does not begin with its own prompt (one that strips a reasoning
        # block, say) keeps the response as it is.
        return opened, whole[len(opened):] if whole.startswith(opened) else response

    def response(self, prompt: str, text: str) -> str:
        return self.example(prompt, text)[1]


def _eos_token(checkpoint: Path) -> str:
    try:
        token = json.loads((checkpoint / model_catalog.TOKENIZER_CONFIG).read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return ""
    token = token.get("content") if isinstance(token, dict) else token
    return token if isinstance(token, str) else ""


def chat_format(checkpoint: Path) -> ChatFormat:
    """The checkpoint's chat template as a format; TemplateError when it has none or it does not render."""
    template = model_catalog.chat_template(checkpoint)
    if template is None:
        raise TemplateError(f"{checkpoint} has no chat template ({model_catalog.TOKENIZER_CONFIG}'s chat_template)")
    chat = ChatFormat(template, _eos_token(checkpoint))
    chat.example("2 + 2?", "4")  # render once now: a template that fails, fails at submission
    return chat


def format_for(config: dict[str, Any]) -> PromptFormat:
    """The format a run's examples are written in (runs stored before prompt_format existed are plain)."""
    if config.get("prompt_format", PLAIN) == CHAT:
        return chat_format(Path(config["model_id"]))
    return PlainFormat()
