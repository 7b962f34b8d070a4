"""One trial: data, prompts, masks, model, training, generation and scoring. Never imports ray."""
