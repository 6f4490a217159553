# !pip install tinker
# ---- cell ----
import tinker
from tinker import types

import numpy as np
import random, re, math
import matplotlib.pyplot as plt
# ---- cell ----
questions = [ "What's the weather like today?", "How do I reset my password?", "Can you explain quantum computing?", "What are the health benefits of exercise?", "How do I bake chocolate chip cookies?", "What's the capital of France?", "How does photosynthesis work?", "What are some good books to read?", "How can I learn Python programming?", "What causes climate change?", "How do I fix a leaky faucet?", "What's the difference between AI and machine learning?", "How do I write a resume?", "What are the symptoms of the flu?", "How does blockchain technology work?", "What's the best way to save money?", "How do I meditate effectively?", "What are the planets in our solar system?", "How can I improve my sleep quality?", "What's the history of the Internet?" ]
# ---- cell ----
dataset = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "foo"}]} for q in questions]
dataset[0], len(dataset)
# ---- cell ----
service_client = tinker.ServiceClient()
base_model = "Qwen/Qwen3-4B-Instruct-2507"
training_client = service_client.create_lora_training_client(base_model=base_model, rank=8)
tokenizer = training_client.get_tokenizer()
# ---- cell ----
# Tokenize one example with the chat template applied:
tokens = tokenizer.apply_chat_template(dataset[0]["messages"], add_generation_prompt=False)
print(f"Token count: {len(tokens)}")
print(f"Decoded: {tokenizer.decode(tokens)}")
# ---- cell ----
def make_datum(example):
    # Full conversation tokens
    tokens = tokenizer.apply_chat_template(example["messages"], add_generation_prompt=False)
    # Prompt-only tokens (to find where completion starts)
    prompt_tokens = tokenizer.apply_chat_template(example["messages"][:-1], add_generation_prompt=True)
    # Weights: 0 for prompt, 1 for completion
    weights = [0] * len(prompt_tokens) + [1] * (len(tokens) - len(prompt_tokens))
    
    input_tokens = tokens[:-1]
    target_tokens = tokens[1:]
    weights = weights[1:]  # Shift to align with targets
    
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens=input_tokens),
        loss_fn_inputs=dict(weights=weights, target_tokens=target_tokens)
    )
# ---- cell ----
datums = [make_datum(ex) for ex in dataset]
print(datums[0])
# ---- cell ----
for epoch in range(5):
    # Forward-backward pass
    fwdbwd_future = training_client.forward_backward(datums, "cross_entropy")
    optim_future = training_client.optim_step(types.AdamParams(learning_rate=5e-4))
    
    # Wait for results
    fwdbwd_result = fwdbwd_future.result()
    optim_result = optim_future.result()
    
    # Compute loss
    logprobs = np.concatenate([out['logprobs'].tolist() for out in fwdbwd_result.loss_fn_outputs])
    weights = np.concatenate([d.loss_fn_inputs['weights'].tolist() for d in datums])
    loss = -np.dot(logprobs, weights) / weights.sum()
    print(f"Epoch {epoch+1}: loss = {loss:.4f}")
# ---- cell ----
# The fwdbwd_result also contains element-wise losses and some metrics:
fwdbwd_result.model_dump().keys(), fwdbwd_result.model_dump()['metrics']
# ---- cell ----
sampling_client = training_client.save_weights_and_get_sampling_client(name="foo_v1")
# ---- cell ----
test_messages = [{"role": "user", "content": "What's your favorite color?"}]
test_tokens = tokenizer.apply_chat_template(test_messages, add_generation_prompt=True)
response = sampling_client.sample(
    prompt=types.ModelInput.from_ints(tokens=test_tokens),
    num_samples=1,
    sampling_params=types.SamplingParams(max_tokens=20, temperature=0.7)
).result()
print(type(response))
print(response)
# ---- cell ----
print(tokenizer.decode(response.sequences[0].tokens))
# ---- cell ----
def generate_problem():
    n = random.choice([2, 4, 6])
    nums = [random.choices(range(1, 10), k=1)[0] if random.random() < 0.7 
            else random.randint(10, 19) for _ in range(n)]
    sums = [nums[i] + nums[i+1] for i in range(0, len(nums), 2)]
    answer = math.prod(sums)
    return nums, sums, answer

for _ in range(5):
    nums, sums, answer = generate_problem()
    print(f"Input: {nums} → Sums: {sums} → Answer: {answer}")
# ---- cell ----
SYSTEM_PROMPT = """Add adjacent pairs of numbers, then multiply the results.

Example: 3, 5, 2, 4
- Add pairs: 3+5=8, 2+4=6
- Multiply: 8×6=48
- Answer: <answer>48</answer>

Now solve the problem below. Put your final answer in <answer>X</answer> tags."""
# ---- cell ----
def compute_reward(response, correct_answer, concise_bonus=False):
    rewards = {"format": 0.0, "correct": 0.0, "concise": 0.0}
    answer_match = re.search(r'<answer>\s*(\d+)\s*</answer>', response)
    if answer_match:
        rewards["format"] = 0.1
        if int(answer_match.group(1)) == correct_answer: rewards["correct"] = 1.0
    if concise_bonus:
        words = len(response.split())
        if words < 200: rewards["concise"] = 0.3 * max(0, (200 - words) / 180)
    rewards["total"] = sum(rewards.values())
    return rewards
# ---- cell ----
resp, ans = "Let me explain at length... " * 200 + "<answer>10</answer>", 10
compute_reward(resp, ans, True)
# ---- cell ----
service_client = tinker.ServiceClient()
base_model = "Qwen/Qwen3-4B-Instruct-2507"
training_client = service_client.create_lora_training_client(base_model=base_model, rank=8)
tokenizer = training_client.get_tokenizer()
# ---- cell ----
def make_prompt_tokens(problem):
    nums, _, _ = problem
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, 
                {"role": "user", "content": ", ".join(map(str, nums))}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)

print(tokenizer.decode(make_prompt_tokens(generate_problem())))
# ---- cell ----
def run_rollouts(n_problems=4, n_samples=4, concise_bonus=False):
    """Generate fresh problems, sample completions, compute rewards."""
    rollouts = []
    sampling_client = training_client.save_weights_and_get_sampling_client()
    for _ in range(n_problems):
        problem = generate_problem()  # Fresh each time
        ans = problem[2]
        prompt_tokens = make_prompt_tokens(problem)
        response = sampling_client.sample(
            prompt=types.ModelInput.from_ints(tokens=prompt_tokens),
            num_samples=n_samples,
            sampling_params=types.SamplingParams(max_tokens=256, temperature=0.8)
        ).result()
        for seq in response.sequences:
            reward_info = compute_reward(tokenizer.decode(seq.tokens), ans, concise_bonus)
            rollouts.append({ "prompt_tokens": prompt_tokens, "completion_tokens": seq.tokens, "completion_logprobs": seq.logprobs, "completion_text": tokenizer.decode(seq.tokens), "reward": reward_info["total"], "reward_breakdown": reward_info, "correct_answer": ans })
    return rollouts
# ---- cell ----
test_rollouts = run_rollouts(n_problems=2, n_samples=2)
for i, r in enumerate(test_rollouts):
    words = len(r['completion_text'].split())
    print(f"{i+1}. reward={r['reward']:.2f} words={words} correct={r['correct_answer']}")
# ---- cell ----
# Let's see what the model is actually generating
for i, r in enumerate(test_rollouts[:2]):
    print(f"\n=== Rollout {i+1} ===")
    print(f"Correct answer: {r['correct_answer']}")
    print(f"Reward breakdown: {r['reward_breakdown']}")
    print(f"Completion:\n{r['completion_text']}")
    print()
# ---- cell ----
def compute_advantages(rollouts):
    """GRPO-style: normalize rewards to mean=0, std=1."""
    rewards = np.array([r["reward"] for r in rollouts])
    if rewards.std() < 1e-8: return [0.0] * len(rollouts)
    return ((rewards - rewards.mean()) / (rewards.std() + 1e-8)).tolist()

def make_rl_datum(rollout: dict, advantage: float) -> types.Datum:
    """Create Datum for importance sampling loss."""
    prompt_tokens, completion_tokens = rollout["prompt_tokens"], rollout["completion_tokens"]
    full_tokens = prompt_tokens + list(completion_tokens)
    
    input_tokens, target_tokens = full_tokens[:-1], full_tokens[1:]
    n_prompt = len(prompt_tokens) - 1
    n_completion = len(completion_tokens)
    
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens=input_tokens),
        loss_fn_inputs={
            "target_tokens": target_tokens,
            "logprobs": [0.0] * n_prompt + list(rollout["completion_logprobs"]),
            "advantages": [0.0] * n_prompt + [advantage] * n_completion
        }
    )
# ---- cell ----
# Test datum creation
advantages = compute_advantages(test_rollouts)
print(f"Advantages: {[f'{a:.2f}' for a in advantages]}")
test_datum = make_rl_datum(test_rollouts[0], advantages[0])
print(f"Datum: input={len(test_datum.model_input.chunks[0].tokens)}, target={test_datum.loss_fn_inputs['target_tokens'].shape[0]}")
# ---- cell ----
def train_step(n_problems=4, n_samples=4, lr=1e-4, concise_bonus=False):
    """One RL step: rollouts → advantages → update."""
    rollouts = run_rollouts(n_problems, n_samples, concise_bonus)
    advantages = compute_advantages(rollouts)
    datums = [make_rl_datum(r, a) for r, a in zip(rollouts, advantages)]
    
    training_client.forward_backward(datums, "importance_sampling").result()
    training_client.optim_step(types.AdamParams(learning_rate=lr)).result()
    
    rewards = [r["reward"] for r in rollouts]
    words = [len(r["completion_text"].split()) for r in rollouts]
    return {
        "reward": np.mean(rewards),
        "accuracy": np.mean([r["reward_breakdown"]["correct"] > 0 for r in rollouts]),
        "words": np.mean(words),
    }, rollouts
# ---- cell ----
# Training loop - fresh problems each iteration!
history = []
print(f"{'Iter':>4} | {'Reward':>6} | {'Acc':>5} | {'Words':>5}\n" + "-" * 40)
for i in range(10):
    metrics, rollouts = train_step(n_problems=8, n_samples=8, lr=2e-4, concise_bonus=(i>5))
    history.append(metrics)
    print(f"{i+1:>4} | {metrics['reward']:>6.2f} | {metrics['accuracy']:>5.0%} | {metrics['words']:>5.0f}")
# ---- cell ----
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
iters = range(1, len(history) + 1)
axes[0].plot(iters, [h["reward"] for h in history], 'b-o'); axes[0].set_title("Reward")
axes[1].plot(iters, [h["accuracy"] for h in history], 'g-o'); axes[1].set_title("Accuracy"); axes[1].set_ylim(0, 1)
axes[2].plot(iters, [h["words"] for h in history], 'r-o'); axes[2].set_title("Avg Words")
plt.tight_layout(); plt.show()
# ---- cell ----
trained_client = training_client.save_weights_and_get_sampling_client(name="rlvr_concise_v1")
base_client = service_client.create_lora_training_client(base_model=base_model, rank=8).save_weights_and_get_sampling_client()
# ---- cell ----
def test_model(client, problem):
    tokens = make_prompt_tokens(problem)
    resp = client.sample(types.ModelInput.from_ints(tokens=tokens), num_samples=1,
                         sampling_params=types.SamplingParams(max_tokens=256, temperature=0.3)).result()
    text = tokenizer.decode(resp.sequences[0].tokens)
    return text, compute_reward(text, problem[2])
# ---- cell ----
ds = []
for _ in range(5):
    p = generate_problem()
    text, reward = test_model(trained_client, p)
    text_base, reward_base = test_model(base_client, p)
    ds.append((text, reward, text_base, reward_base))
    print(f"Problem: {p[0]}\nTrained Reward: {reward['total']}\nBase Reward: {reward_base['total']}\n")
# ---- cell ----
ds = []
for _ in range(5):
    p = generate_problem()
    text, reward = test_model(trained_client, p)
    text_base, reward_base = test_model(base_client, p)
    ds.append((text, reward, text_base, reward_base))
    print(f"Problem: {p[0]}\nTrained Reward: {reward['total']}\nBase Reward: {reward_base['total']}\n")