"""The judge: does a rollout reach the same final answer as the model's own text-view answer?

    verify       cordlite's rules: extract a final answer (letter, number, expression, text), compare two
    voicebench   VoiceBench's multiple-choice letter extraction, restated as data
    conventions  each benchmark's own scoring rule (VoiceBench MCQ, GSM8K, MMAU) for `cordlite eval`
    llm          the local LLM judge: prompt, strict verdict parsing, verdict cache
    rewards      rule rewards, the Judge (rules, llm, rules_then_llm), building one for a recipe
    check        `cordlite judge-check`: the judge's agreement with labelled pairs

May import: models/ (loading a judge model, sampling its verdicts) and the shared ground.
Must not be imported by: models/. It never imports objective/, train/, eval/, deploy/ or testbed/.
"""
