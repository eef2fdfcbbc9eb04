"""Built-in chat templates: GPT-2 was trained on plain web text and has none of its own.

A template turns the messages into one prompt and names the stop strings that end the
assistant's turn (added to the request's own ``stop``). Chosen with ``--chat-template NAME``:

``plain``   a transcript any GPT-2 can continue::

                System: You are terse.
                User: Hi!
                Assistant:

            stops at ``"\\nUser:"`` and ``"\\nSystem:"`` (the model starting the next turn).

``chatml``  ChatML, for GPT-2 models fine-tuned on it (the markers are ordinary text to GPT-2's
            tokenizer)::

                <|im_start|>user
                Hi!<|im_end|>
                <|im_start|>assistant

            stops at ``"<|im_end|>"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ChatTemplate:
    turn: Callable[[str, str], str]  # (role, text) -> the turn's text
    generation_prompt: str  # what opens the assistant's reply
    stop: tuple

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """``messages``: (role, text) pairs; "developer" is OpenAI's new name for "system"."""
        turns = [self.turn("system" if role == "developer" else role, text) for role, text in messages]
        return "".join(turns) + (self.generation_prompt if add_generation_prompt else "")


TEMPLATES = {
    "plain": ChatTemplate(turn=lambda role, text: f"{role.capitalize()}: {text}\n",
                          generation_prompt="Assistant:", stop=("\nUser:", "\nSystem:")),
    "chatml": ChatTemplate(turn=lambda role, text: f"<|im_start|>{role}\n{text}<|im_end|>\n",
                           generation_prompt="<|im_start|>assistant\n", stop=("<|im_end|>",)),
}
