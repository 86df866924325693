"""The OpenAI request shapes `tkc serve` accepts (pydantic, strict types) and its OpenAI-style error.

Strict: a string where a number belongs, a bool where an integer belongs, a missing `messages` is a 400 with the
field's path, never a coercion. Unknown fields are ignored (clients send `user`, `metadata`, ...), except the
ones that would change the prompt: a request-supplied chat template is refused, since the bundle's template is
what the model was trained on. Limits that depend on the server's settings (n, max_tokens, the stop list, the
context) are checked in `app.py` before any model work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# fields some servers accept that would replace or bend the bundle's template
REFUSED_FIELDS = ("chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message")
MEDIA_PARTS = ("image_url", "input_audio", "audio_url", "video_url", "image", "audio", "video", "file")
MEDIA_REFUSED = "media not supported: this server takes text, image_url and input_audio content parts only"
TEXT_ONLY = ("media not supported: this bundle's model takes no such media (image_url parts need a vision-language "
             "bundle, input_audio parts an audio-language one)")


class ApiError(Exception):
    """An OpenAI-style error: HTTP status and {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Request(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _no_template(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = [k for k in REFUSED_FIELDS if k in data]
            if named:
                raise ValueError(f"{named[0]}: a request-supplied chat template is refused; this server renders "
                                 "every prompt with the bundle's template, the one the model was trained on")
            where = _unpaired_surrogate(data, "")
            if where is not None:  # JSON's \ud800 escape: no UTF-8 encoding, the tokenizer fails on it (was a 500)
                raise ValueError(f"{where or 'body'}: a string holds an unpaired UTF-16 surrogate, which is not text")
        return data


def _unpaired_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (value or key) in a JSON value that UTF-8 cannot encode, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _unpaired_surrogate(key, here) is not None:
            return here
        found = _unpaired_surrogate(item, here)
        if found is not None:
            return found
    return None


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=256)
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Strict):
    id: str | None = Field(default=None, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ImageURL(_Strict):
    url: str = Field(min_length=1)  # a data URL, a path under the media root, an allowed http(s) URL (media.py)
    detail: str | None = Field(default=None, max_length=16)  # accepted, not used


class InputAudio(_Strict):
    data: str = Field(min_length=1)  # base64 of the file
    format: str = Field(max_length=16)  # wav is read (media.py's read_wav); other formats are refused


class ContentPart(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str = Field(max_length=64)
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if (self.type, self.image_url is None, self.input_audio is None) in (("image_url", False, True),
                                                                              ("input_audio", True, False)):
            return self  # read (or refused) by the route: it knows whether the bundle takes such media
        if self.type in MEDIA_PARTS or self.type.endswith("_url"):
            raise ValueError(MEDIA_REFUSED)
        if self.type != "text" or self.text is None or (self.image_url or self.input_audio) is not None:
            raise ValueError(f"content part type {self.type!r}: only {{'type': 'text', 'text': ...}} is accepted")
        return self


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, max_length=256)

    def text(self, placeholder: str = "", audio: str = "") -> str:
        """The text parts joined; each image part is `placeholder` (the bundle's `<image>`), each audio part
        `audio` (`<audio>`), where it stands."""
        if isinstance(self.content, list):
            return "".join(placeholder if p.image_url is not None else audio if p.input_audio is not None
                           else p.text or "" for p in self.content)
        return self.content or ""

    def audio_parts(self) -> list[InputAudio]:
        if isinstance(self.content, list):
            return [p.input_audio for p in self.content if p.input_audio is not None]
        return []

    def image_urls(self) -> list[str]:
        if isinstance(self.content, list):
            return [p.image_url.url for p in self.content if p.image_url is not None]
        return []


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Request):
    model: str = Field(max_length=512)
    n: int = Field(default=1, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=0, le=0)  # accepted at their no-op value only
    frequency_penalty: float = Field(default=0.0, ge=0, le=0)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto"] | None = None

    @model_validator(mode="after")
    def _order(self) -> ChatRequest:
        check_order(self.messages)
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: Literal[False] = False
    best_of: int | None = Field(default=None, ge=1, le=1)
    suffix: None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ScoreRequest(_Request):
    model: str = Field(max_length=512)
    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> ScoreRequest:
        check_order(self.messages, scoring=True)
        return self


def check_order(messages: list[Message], *, scoring: bool = False) -> None:
    """A conversation a chat template can render: system first only, tool replies after a tool call, and (to
    generate) ending with the user or a tool result; (to score) ending with the assistant's reply."""
    for i, m in enumerate(messages):
        if m.role in ("system", "developer") and i > 0:
            raise ValueError(f"messages[{i}]: a {m.role} message may only come first")
        if m.role == "tool" and (i == 0 or messages[i - 1].role not in ("assistant", "tool")
                                 or not any(x.tool_calls for x in messages[:i])):
            raise ValueError(f"messages[{i}]: a tool message must follow an assistant message with tool_calls")
        if m.role == "assistant" and not m.text() and not m.tool_calls:
            raise ValueError(f"messages[{i}]: an assistant message needs content or tool_calls")
        if m.role in ("user", "system", "developer", "tool") and m.content is None:
            raise ValueError(f"messages[{i}]: a {m.role} message needs content")
        if m.tool_calls and m.role != "assistant":
            raise ValueError(f"messages[{i}]: only assistant messages carry tool_calls")
    want = ("assistant",) if scoring else ("user", "tool")
    if messages[-1].role not in want:
        raise ValueError(f"messages[{len(messages) - 1}]: the last message must be from "
                         f"{' or '.join(want)}, not {messages[-1].role}")
