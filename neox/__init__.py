"""neox: a GPT-NeoX / Pythia-style pretraining stack on DeepSpeed that drives its data mixture with acodm."""
