"""Training objectives: next-item and masked-item (full / sampled softmax), contrastive, distillation,
click prediction, and the joint pretrain / distill losses that mix them."""
