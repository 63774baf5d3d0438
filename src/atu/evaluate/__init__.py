from .rwku import build_prompt, evaluate_target, generate, rouge_recall, summarize  # noqa: F401
