"""The CORD objective: the maths, and one step.

    weights      PURE: per-token weights w_t = w_kl * w_pos (alpha on the top-K D_t, beta decaying)
    advantages   PURE: GRPO group advantages A = r - mean(r)
    losses       PURE: reverse / forward KL per token, the weighted token loss, policy gradient, SFT
    logprobs     per-token log-probs and full-vocabulary divergences, in chunks of positions; the
                 gradient pass that reads each prompt once (shared_prompt_hidden)
    references   the teacher's text-view reference answers (ReferenceStore), the sampling keys
    collected    what collection hands the loss (Collected) and its slice per micro-batch
    step         one CORD step: no-grad collection (rollouts, rewards), the teacher's log-probs, the loss

The pure modules import only torch and the standard library: tensors and scalars in, (loss, stats)
out, no config, I/O or devices. Only step.py unpacks a recipe.

May import: judge/ (rewards), models/ (adapters_off, sampling) and the shared ground.
Must not be imported by: judge/ or models/. It never imports train/, eval/, deploy/ or testbed/.
"""
