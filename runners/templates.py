"""Prompt templates: a registry of name → TemplateEntry, and rendering a dialogue into a prompt."""

from __future__ import annotations

from runners.config import TemplateEntry

# `custom` and `alpaca` are the two formats of the Phi-2 prompt ablation, word for word;
# `instruct` is the Phi-1.5 TweetSumm notebook's format with its default system prompt.
TEMPLATES: dict[str, TemplateEntry] = {
    "custom": TemplateEntry(
        text="Instruction: Summarise the following conversation\nConversation: {dialogue}\nSummary:",
        summary_prefix=" ",
    ),
    "alpaca": TemplateEntry(
        text=(
            "Below is an instruction that describes a task, paired with an input that provides further context.\n"
            "Write a response that appropriately completes the request.\n\n"
            "### Instruct: Summarise the following Conversation.\n\n"
            "{dialogue}\n\n"
            "### Output:\n"
        ),
    ),
    "instruct": TemplateEntry(
        text=(
            "### Instruction: Below is a conversation between a human and an AI agent. "
            "Write a summary of the conversation.\n\n"
            "### Input:\n{dialogue}\n\n"
            "### Response:\n"
        ),
    ),
    "chat": TemplateEntry(text="Summarise the following conversation.\n\n{dialogue}", chat=True),
    "t5": TemplateEntry(text="summarize: {dialogue}"),
}


def render_prompt(template: TemplateEntry, dialogue: str, tokenizer=None) -> str:
    """The prompt text the model sees before the summary."""
    text = template.text.replace("{dialogue}", dialogue)
    if not template.chat:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template uses the chat format but the tokenizer has no chat template")
    messages = [{"role": "user", "content": text}]
    if template.instruction:
        messages.insert(0, {"role": "system", "content": template.instruction})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
