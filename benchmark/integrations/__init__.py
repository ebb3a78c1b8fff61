"""The benchmark inside other tools: lm-eval (model and tasks), Ray, peft adapter export."""
