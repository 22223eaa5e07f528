"""What a checkpoint folder holds, read and checked: the model-family table, config.json, the weights
(safetensors / .bin, sharded or not), Hugging Face Hub ids, and the tokenizer."""
