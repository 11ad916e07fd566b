"""The playground: prompts asked of models (presets, checkpoints, runs' exports, registry versions) side by
side, as generation requests that workers answer; each model's requests are its history."""
