from .generation import generate, generate_corpus  # noqa: F401
from .rwku import build_prompt, evaluate_target, rouge_recall, summarize  # noqa: F401
