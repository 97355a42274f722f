"""Evaluation: accuracy from audio and from text, the gap, and where it lives.

    evaluate     `cordlite eval`: answer every item from both views, score, resume
    summary      summary.json / summary.md / accuracy.png, the baseline comparison
    io           load the model to evaluate, check a run folder's settings (EvalError)
    gap          PURE arithmetic: accuracy, gap, gap reduction (a ratio of averages, as the paper)
    diagnose     `cordlite diagnose`: per-token reverse KL along audio rollouts
    report       plots (matplotlib, Agg)
    cli          the eval, diagnose and judge-check commands

May import: objective/ (log-probs), judge/, models/ and the shared ground.
Must not be imported by: anything below it; train/ and deploy/ are its peers and do not import it.
"""
