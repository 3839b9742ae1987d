"""Pure data about knowledge distillation: the vocabulary of the language and its type rules."""
