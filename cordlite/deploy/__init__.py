"""Deployment: merge a trained adapter into its base, check the merge, answer spoken questions.

    loading      what merge and infer start from: resolve a run or adapter directory, load a
                 checkpoint for inference (MergeError; the adapter helpers are models.adapter)
    infer        `cordlite infer`: one clip or a whole manifest, resumable
    merge_check  the equivalence check of a merged model against base + adapter
    merge        `cordlite merge`: bf16/fp32 or NF4 export, its records and model card
    model_card   the README.md of an export
    cli          the merge and infer commands

Inside, merge -> merge_check -> infer -> loading, one way only.

May import: objective/ (log-probs for the check), models/ and the shared ground.
Must not be imported by: anything below it; train/ and eval/ are its peers and do not import it.
"""
