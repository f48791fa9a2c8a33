"""Real architectures with random weights, built from config objects (no download).

Used by the tests (``tiny`` scale: a few hundred kB, saved with
``save_pretrained`` and loaded back through the registry like real weights)
and by ``scripts/gpu_check.py`` (``full`` scale: the real sizes of SDXL,
FLUX.1-schnell, BLIP-2 OPT-2.7b and a BERT-base embedder, for throughput).

``build(architecture, scale)`` returns what the family's constructor takes:
a diffusers pipeline, a ``(model, processor)`` pair, or a SentenceTransformer.
Tokenizers are byte-level BPE tokenizers without merges (every byte one
token): text content barely matters for random weights, sequence lengths do.
"""

from __future__ import annotations

from typing import Any, Callable

ARCHITECTURES: dict[str, tuple[str, str]] = {
    # name: (family, role)
    "sdxl": ("diffusers", "text-to-image"),
    "flux": ("diffusers", "text-to-image"),
    "flux2": ("diffusers", "text-to-image"),
    "flux2-klein": ("diffusers", "text-to-image"),
    "glm-image": ("diffusers", "text-to-image"),
    "hunyuan-image": ("diffusers", "text-to-image"),
    "blip2": ("transformers-captioner", "image-to-text"),
    "florence2": ("transformers-captioner", "image-to-text"),
    "llava": ("transformers-captioner", "image-to-text"),
    "mllama": ("transformers-captioner", "image-to-text"),
    "pixtral": ("transformers-captioner", "image-to-text"),
    "clip-text": ("clip", "text-embedder"),
    "clip-vision": ("clip", "image-embedder"),
    "bert-embedder": ("sentence-transformers", "text-embedder"),
    "qwen3-embedder": ("sentence-transformers", "text-embedder"),
    "colqwen-text": ("colqwen", "text-embedder"),
    "colqwen-vision": ("colqwen", "image-embedder"),
    "qwen2.5-vl": ("transformers-captioner", "image-to-text"),
}

SCALES = ("tiny", "full")


def byte_tokenizer(max_length: int = 77, *, bos: str = "<s>", eos: str = "</s>", pad: str = "<pad>",
                   image_token: str | None = None, extra_tokens: tuple[str, ...] = (), chat_template: str | None = None,
                   first_tokens: tuple[str, ...] = (), wrap: bool = True, padding_side: str = "right", **named: str):
    """A fast tokenizer with one token per byte plus specials (ids: pad 0, bos 1, eos 2, unk 3; image 260,
    then ``extra_tokens`` in order). ``named`` sets special-token attributes a processor reads
    (``tokenizer.<name>``), each added to the vocabulary too. ``first_tokens`` take the first ids (the
    specials follow, or keep their id there); ``wrap=False`` adds no bos/eos around a text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for special in (*first_tokens, pad, bos, eos, "<unk>"):
        vocab.setdefault(special, len(vocab))
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if wrap:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
        )
    extra_special = {"image_token": image_token} if image_token else {}
    extra_special.update(named)
    extra = {"extra_special_tokens": extra_special} if extra_special else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>",
        model_max_length=max_length, padding_side=padding_side, **extra,
    )
    missing = [t for t in extra_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


VOCAB = 260  # len(byte_tokenizer())


def _clip_text_config(tiny: bool, big: bool = False):
    from transformers import CLIPTextConfig

    if tiny:
        return CLIPTextConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            projection_dim=32, max_position_embeddings=77, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            hidden_act="gelu",
        )
    if big:  # OpenCLIP ViT-bigG text tower (SDXL's text_encoder_2)
        return CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
            projection_dim=1280, hidden_act="gelu", bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    return CLIPTextConfig(  # OpenAI CLIP ViT-L/14 text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        projection_dim=768, hidden_act="quick_gelu", bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def sdxl(scale: str = "tiny"):
    """StableDiffusionXLPipeline with SDXL-Turbo's components (full) or a toy of the same shape."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tiny = scale == "tiny"
    if tiny:
        unet = _make(UNet2DConditionModel,
            block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=1,
        )
        vae = _make(AutoencoderKL,
            block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8,
            layers_per_block=1,
        )
    else:
        unet = _make(UNet2DConditionModel,
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        )
        vae = _make(AutoencoderKL,
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            sample_size=1024, scaling_factor=0.13025, force_upcast=False,
        )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="trailing"
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=_make(CLIPTextModel, _clip_text_config(tiny)),
        text_encoder_2=_make(CLIPTextModelWithProjection, _clip_text_config(tiny, big=True)),
        tokenizer=byte_tokenizer(77),
        tokenizer_2=byte_tokenizer(77),
        unet=unet,
        scheduler=scheduler,
    )


def flux(scale: str = "tiny"):
    """FluxPipeline with FLUX.1-schnell's component sizes (full) or a toy of the same shape."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tiny = scale == "tiny"
    if tiny:
        transformer = _make(FluxTransformer2DModel,
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        )
        t5 = T5Config(
            vocab_size=VOCAB, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, pad_token_id=0, eos_token_id=2
        )
        vae = _make(AutoencoderKL,
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
            latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        )
    else:
        transformer = _make(FluxTransformer2DModel,
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
            axes_dims_rope=[16, 56, 56],
        )
        t5 = T5Config(
            vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=2,
        )
        vae = _make(AutoencoderKL,
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
        )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=_make(CLIPTextModel, _clip_text_config(tiny)),
        tokenizer=byte_tokenizer(77),
        text_encoder_2=_make(T5EncoderModel, t5),
        tokenizer_2=byte_tokenizer(512),
        transformer=transformer,
    )


def chat_template(image: str = "<image>") -> str:
    """A minimal chat template: ``ROLE: content`` lines, ``image`` where a message holds an image, string
    or list contents (what the pipelines and processors below pass to ``apply_chat_template``)."""
    return (
        "{% for message in messages %}{{ message['role'] | upper }}: "
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}" + image +
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


def _pixtral_processor(tokenizer, template: str):
    """A ``PixtralProcessor`` with 8-px patches and 32-px images, its PIL image processor (the processor
    loaded back takes torchvision's where it imports: ``processors.load_processor``)."""
    from transformers import PixtralImageProcessorPil

    from .processors import processor_class

    return processor_class("PixtralProcessor")(
        image_processor=PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8), tokenizer=tokenizer,
        patch_size=8, chat_template=template,
    )


def _flux2_transformer_and_vae(tiny: bool, text_dim: int, guidance_embeds: bool):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    if not tiny:
        raise ValueError("FLUX.2 is built at tiny scale only")
    transformer = _make(Flux2Transformer2DModel,
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=text_dim, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=guidance_embeds,
    )
    vae = _make(AutoencoderKLFlux2,
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    )
    return transformer, vae


# the tiny text encoders have 3 layers; the pipelines stack the hidden states of the layers named in
# their call's ``text_encoder_out_layers`` (FLUX.2: 10, 20, 30 of Mistral Small; klein: 9, 18, 27 of Qwen3)
FLUX2_TINY_OUT_LAYERS = [1, 2, 3]


def flux2(scale: str = "tiny"):
    """Flux2Pipeline (FLUX.2-dev): a Mistral-3 text encoder (Pixtral vision + Mistral), a flow-matching
    transformer and the FLUX.2 VAE, as a toy of the same shape (tiny only)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tiny = scale == "tiny"
    tokenizer = byte_tokenizer(512, image_token="[IMG]", extra_tokens=("[IMG_BREAK]", "[IMG_END]"),
                               chat_template=chat_template("[IMG]"))
    processor = _pixtral_processor(tokenizer, chat_template("[IMG]"))
    hidden = 16
    config = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37,
                         max_position_embeddings=512, num_attention_heads=4, num_hidden_layers=3,
                         num_key_value_heads=2, sliding_window=None, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(model_type="pixtral", hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37, image_size=32, patch_size=8),
        image_token_index=tokenizer.image_token_id, vision_feature_layer=-1, spatial_merge_size=1,
    )
    transformer, vae = _flux2_transformer_and_vae(tiny, 3 * hidden, guidance_embeds=True)
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_make(Mistral3ForConditionalGeneration, config),
        tokenizer=processor, transformer=transformer,
    )


def flux2_klein(scale: str = "tiny"):
    """Flux2KleinPipeline (FLUX.2 [klein]): a Qwen3 text encoder, a flow-matching transformer without
    guidance embedding (step-distilled) and the FLUX.2 VAE, as a toy of the same shape (tiny only)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tiny = scale == "tiny"
    tokenizer = byte_tokenizer(512, bos="<|im_start|>", eos="<|im_end|>", pad="<|endoftext|>",
                               chat_template=chat_template())
    hidden = 16
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformer, vae = _flux2_transformer_and_vae(tiny, 3 * hidden, guidance_embeds=False)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_make(Qwen3ForCausalLM, config),
        tokenizer=tokenizer, transformer=transformer, is_distilled=True,
    )


# GLM-Image's vocabulary starts with its prior's image codes (<|dit_token_0|>...), then its image start
# and end tokens (16384 and 16385 for 16384 codes); a toy has 32 codes
GLM_IMAGE_CODES = 32


def glm_image(scale: str = "tiny"):
    """GlmImagePipeline (GLM-Image): an autoregressive prior (``GlmImageForConditionalGeneration``: a
    GLM decoder with a vision encoder and a VQ codebook) that writes image tokens after the prompt's
    grid tokens, a ByT5-tokenised T5 glyph encoder, a DiT (``GlmImageTransformer2DModel``) conditioned
    on the prior's tokens, a VAE, as a toy of the same shape (tiny only; the sizes follow diffusers'
    own GLM-Image test: patch size x VAE scale = 16, the prior's tokens upsampled 2x from 32 px).

    Its tokenizer has GLM-Image's layout: the image codes first, then the image start token (the
    tokenizer's bos, which the processor puts after the grid tokens ``<sop>H W<eop>``) and end token,
    then text. The prior's head covers the codes only, so random weights never end an image early
    (the real head also covers the start/end tokens; trained weights end an image after its grid)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel
    from transformers import (
        ByT5Tokenizer,
        GlmImageConfig,
        GlmImageForConditionalGeneration,
        GlmImageImageProcessorPil,
        GlmImageProcessor,
        T5Config,
        T5EncoderModel,
    )

    if scale != "tiny":
        raise ValueError("glm-image is built at tiny scale only")
    codes = GLM_IMAGE_CODES
    dit = [f"<|dit_token_{i}|>" for i in range(codes + 2)]
    tokenizer = byte_tokenizer(2048, first_tokens=tuple(dit), bos=dit[codes], eos=dit[codes + 1], pad="<|endoftext|>",
                               wrap=False, padding_side="left", image_token="<|image|>", grid_bos_token="<sop>",
                               grid_eos_token="<eop>")  # the pipeline pads a batch on the left
    template = chat_template()
    processor = GlmImageProcessor(image_processor=GlmImageImageProcessorPil(patch_size=8, merge_size=1),
                                  tokenizer=tokenizer, chat_template=template)
    ids = tokenizer.convert_tokens_to_ids
    config = GlmImageConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         vision_vocab_size=codes, rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2]},
                         pad_token_id=ids("<|endoftext|>"), eos_token_id=ids(dit[codes + 1])),
        vision_config=dict(depth=2, hidden_size=32, num_heads=2, image_size=32, patch_size=8, intermediate_size=37),
        vq_config=dict(embed_dim=32, num_embeddings=codes, latent_channels=32),
        image_token_id=ids("<|image|>"), image_start_token_id=ids(dit[codes]), image_end_token_id=ids(dit[codes + 1]),
    )
    glyph_tokenizer = ByT5Tokenizer()
    t5 = T5Config(vocab_size=len(glyph_tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                  pad_token_id=0, eos_token_id=1)
    transformer = _make(GlmImageTransformer2DModel,
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=32, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=codes,
    )
    vae = _make(AutoencoderKL,
        block_out_channels=(4, 8, 16, 16), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=4, sample_size=64,
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    return GlmImagePipeline(
        tokenizer=glyph_tokenizer, processor=processor, text_encoder=_make(T5EncoderModel, t5),
        vision_language_encoder=_make(GlmImageForConditionalGeneration, config), vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _qwen2_tokenizer(extra_specials: tuple[str, ...]):
    """A ``Qwen2Tokenizer`` (Qwen's class: its pre-tokenizer and byte-level BPE) with one token per byte
    (no merges) plus ``<|endoftext|>`` (id 0) and ``extra_specials``."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=2048)
    tokenizer.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    return tokenizer


def hunyuan_image(scale: str = "tiny"):
    """HunyuanImagePipeline (HunyuanImage 2.1, the diffusers port): a Qwen2.5-VL text encoder (its hidden
    states, third from last, after a fixed system prompt), a ByT5 glyph encoder (T5) for quoted text, a
    dual/single-stream DiT, its own VAE and two adaptive projected guiders (plain and OCR prompts), as a
    toy of the same shape (tiny only; sizes after diffusers' own HunyuanImage test: an 8x VAE, 16-px
    latent patches of 1).

    The pipeline pads every prompt to 1000 tokens after dropping the first 34 (the length of its system
    prompt in Qwen's real vocabulary; here, where every byte is a token, the first 34 bytes)."""
    from diffusers import (
        AdaptiveProjectedMixGuidance,
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLForConditionalGeneration, T5Config, T5EncoderModel

    if scale != "tiny":
        raise ValueError("hunyuan-image is built at tiny scale only")
    tokenizer = _qwen2_tokenizer(("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>",
                                  "<|vision_end|>", "<|video_pad|>"))
    glyph_tokenizer = ByT5Tokenizer()
    t5 = T5Config(vocab_size=len(glyph_tokenizer), d_model=32, d_kv=4, d_ff=16, num_layers=2, num_heads=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=32,
                  feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                  tie_word_embeddings=False)
    transformer = _make(HunyuanImageTransformer2DModel,
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False, text_embed_dim=32,
        text_embed_2_dim=32, rope_axes_dim=(4, 4),
    )
    vae = _make(AutoencoderKLHunyuanImage,
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
        scaling_factor=0.476986, spatial_compression_ratio=8, sample_size=128,
    )
    return HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae,
        text_encoder=_make(Qwen2_5_VLForConditionalGeneration, _qwen2_5_vl_config(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=_make(T5EncoderModel, t5), tokenizer_2=glyph_tokenizer, transformer=transformer,
        guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=2),
        ocr_guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=3),
    )


def blip2(scale: str = "tiny"):
    """(Blip2ForConditionalGeneration, Blip2Processor): BLIP-2 OPT-2.7b sizes (full) or a toy."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    tiny = scale == "tiny"
    tokenizer = byte_tokenizer(512)
    image_size = 32 if tiny else 224
    queries = 4 if tiny else 32
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        num_query_tokens=queries,
    )
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if tiny:
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      image_size=image_size, patch_size=8)
        qformer = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       encoder_hidden_size=32, vocab_size=64)
        text = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32, ffn_dim=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    else:
        vision = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                      image_size=224, patch_size=14)
        qformer = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       encoder_hidden_size=1408)
        text = OPTConfig(vocab_size=50304, hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240,
                         num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
                         num_query_tokens=queries, image_token_index=image_token)
    return _make(Blip2ForConditionalGeneration, config).eval(), processor


def florence2(scale: str = "tiny"):
    """(Florence2ForConditionalGeneration, Florence2Processor): a toy DaViT + BART (tiny only)."""
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    if scale != "tiny":
        raise ValueError("florence2 is built at tiny scale only")
    tokenizer = byte_tokenizer(512, image_token="<image>")
    image_processor = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    image_processor.image_seq_length = 17  # (32 / 8)^2 patches + 1 pooled token
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    vision = dict(depths=[1, 1], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4], patch_size=[7, 3],
                  patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], projection_dim=32,
                  window_size=2, max_position_embeddings=50, drop_path_rate=0.0)
    text = dict(model_type="bart", vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
                max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                decoder_start_token_id=2, forced_bos_token_id=None)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    return _make(Florence2ForConditionalGeneration, config).eval(), processor


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llava(scale: str = "tiny"):
    """(LlavaForConditionalGeneration, LlavaProcessor): a toy chat VLM (CLIP vision + Llama), tiny only.

    It takes the path of the chat VLMs (Qwen2.5-VL): ``AutoModelForImageTextToText``,
    a chat template, left padding, the prompt cut from the output.
    """
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    if scale != "tiny":
        raise ValueError("llava is built at tiny scale only")
    tokenizer = byte_tokenizer(512, image_token="<image>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, chat_template=LLAVA_CHAT_TEMPLATE, patch_size=8,
        vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=tokenizer.image_token_id, vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu",
    )
    return _make(LlavaForConditionalGeneration, config).eval(), processor


def pixtral(scale: str = "tiny"):
    """(LlavaForConditionalGeneration, PixtralProcessor): Pixtral's architecture as transformers ports it
    (a Pixtral vision encoder with 2-D RoPE, a Mistral decoder, ``[IMG]``/``[IMG_BREAK]``/``[IMG_END]``
    tokens), tiny only."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if scale != "tiny":
        raise ValueError("pixtral is built at tiny scale only")
    template = chat_template("[IMG]")
    tokenizer = byte_tokenizer(512, image_token="[IMG]", extra_tokens=("[IMG_BREAK]", "[IMG_END]"),
                               chat_template=template)
    processor = _pixtral_processor(tokenizer, template)
    config = LlavaConfig(
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        text_config=dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=tokenizer.image_token_id, vision_feature_select_strategy="full", vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    return _make(LlavaForConditionalGeneration, config).eval(), processor


def mllama(scale: str = "tiny"):
    """(MllamaForConditionalGeneration, MllamaProcessor): Llama 3.2 Vision's architecture (tiled vision
    encoder with global layers, a Llama decoder with cross-attention layers), tiny only."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    if scale != "tiny":
        raise ValueError("mllama is built at tiny scale only")
    template = chat_template("<|image|>")
    tokenizer = byte_tokenizer(512, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                               image_token="<|image|>", extra_tokens=("<|python_tag|>",), chat_template=template)
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=2),
        tokenizer=tokenizer, chat_template=template,
    )
    config = MllamaConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                           intermediate_size=37, vision_output_dim=32, image_size=32, patch_size=8, max_num_tiles=2,
                           intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=37, max_position_embeddings=512,
                         cross_attention_layers=[1], bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=tokenizer.image_token_id,
    )
    return _make(MllamaForConditionalGeneration, config).eval(), processor


def _clip(scale: str = "tiny"):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    if scale != "tiny":
        raise ValueError("clip is built at tiny scale only")
    text = _clip_text_config(True).to_dict()
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8, projection_dim=32)
    model = _make(CLIPModel, CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=byte_tokenizer(77),
    )
    return model, processor


def bert_embedder(scale: str = "tiny"):
    """A SentenceTransformer (BERT, mean pooling, normalisation): BERT-base sizes (full) or a toy."""
    import tempfile

    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tokenizer = byte_tokenizer(512)
    if scale == "tiny":
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=512, pad_token_id=0)
    else:
        config = BertConfig(vocab_size=30522, pad_token_id=0)
    with tempfile.TemporaryDirectory() as tmp:
        _make(BertModel, config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        word = models.Transformer(tmp, max_seq_length=128)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = models.Pooling(dim(), pooling_mode="mean")
    return SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")


def qwen3_embedder(scale: str = "tiny"):
    """A SentenceTransformer with Qwen3-Embedding's modules (a Qwen3 decoder, last-token pooling, left
    padding, normalisation), tiny only."""
    import tempfile

    from sentence_transformers import SentenceTransformer, models
    from transformers import Qwen3Config, Qwen3Model

    if scale != "tiny":
        raise ValueError("qwen3-embedder is built at tiny scale only")
    tokenizer = byte_tokenizer(512, bos="<|im_start|>", eos="<|endoftext|>", pad="<|endoftext|>")
    tokenizer.padding_side = "left"
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with tempfile.TemporaryDirectory() as tmp:
        _make(Qwen3Model, config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        word = models.Transformer(tmp, max_seq_length=128, tokenizer_args={"padding_side": "left"})
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = models.Pooling(dim(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")


QWEN_VL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>")


def _qwen2_5_vl_config(tokenizer, text_hidden: int = 32):
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
                         bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=text_hidden,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_vl_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    # 28-px merged patches: a 40x50 image becomes 2x2 merged patches, never more than 4x4
    return Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)


def colqwen(scale: str = "tiny"):
    """(ColQwen2ForRetrieval, ColQwen2Processor) over a Qwen2.5-VL backbone, ColNomic's architecture
    (multi-vector: one projected, normalised vector per token), tiny only."""
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor

    if scale != "tiny":
        raise ValueError("colqwen is built at tiny scale only")
    tokenizer = byte_tokenizer(512, bos="<|im_start|>", eos="<|endoftext|>", pad="<|endoftext|>",
                               image_token="<|image_pad|>", extra_tokens=QWEN_VL_TOKENS)
    processor = ColQwen2Processor(image_processor=_qwen_vl_image_processor(), tokenizer=tokenizer)
    config = ColQwen2Config(vlm_config=_qwen2_5_vl_config(tokenizer).to_dict(), embedding_dim=16)
    return _make(ColQwen2ForRetrieval, config).eval(), processor


def qwen2_5_vl(scale: str = "tiny"):
    """(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor): Qwen2.5-VL's architecture, tiny only.
    Its processor holds a video processor where torchvision imports, and none where it does not
    (``processors.without_video_processor``)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from .processors import torchvision_available, without_video_processor

    if scale != "tiny":
        raise ValueError("qwen2.5-vl is built at tiny scale only")
    template = chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer = byte_tokenizer(512, bos="<|im_start|>", eos="<|im_end|>", pad="<|endoftext|>",
                               image_token="<|image_pad|>", extra_tokens=QWEN_VL_TOKENS, chat_template=template)
    if torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        processor = Qwen2_5_VLProcessor(image_processor=_qwen_vl_image_processor(), tokenizer=tokenizer,
                                        video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    else:
        processor = without_video_processor(Qwen2_5_VLProcessor)(
            image_processor=_qwen_vl_image_processor(), tokenizer=tokenizer, chat_template=template)
    return _make(Qwen2_5_VLForConditionalGeneration, _qwen2_5_vl_config(tokenizer)).eval(), processor


BUILDERS: dict[str, Callable[[str], Any]] = {
    "sdxl": sdxl,
    "flux": flux,
    "flux2": flux2,
    "flux2-klein": flux2_klein,
    "glm-image": glm_image,
    "hunyuan-image": hunyuan_image,
    "blip2": blip2,
    "florence2": florence2,
    "llava": llava,
    "mllama": mllama,
    "pixtral": pixtral,
    "clip-text": _clip,
    "clip-vision": _clip,
    "bert-embedder": bert_embedder,
    "qwen3-embedder": qwen3_embedder,
    "colqwen-text": colqwen,
    "colqwen-vision": colqwen,
    "qwen2.5-vl": qwen2_5_vl,
}


_target: dict[str, Any] = {"device": None, "dtype": None}


def _make(cls, *args, **kwargs):
    """``cls(*args, **kwargs)``, its weights created on the build's device (a GPU builds the full
    sizes in seconds; a CPU takes minutes) and cast to the build's dtype at once, so that the
    peak memory is one module in float32, not the whole pipeline. Only modules: schedulers
    and tokenizers stay on the CPU."""
    import contextlib

    import torch

    device, dtype = _target["device"], _target["dtype"]
    with torch.device(device) if device is not None else contextlib.nullcontext():
        module = cls(*args, **kwargs)
    return module.to(dtype) if dtype is not None else module


def build(architecture: str, scale: str = "tiny", device: str | None = None, dtype=None, seed: int = 0):
    """Build ``architecture`` at ``scale``, module weights on ``device`` (default: CPU) in ``dtype``,
    drawn from ``seed``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}")
    try:
        builder = BUILDERS[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(BUILDERS)}") from None
    import torch

    _target.update(device=device, dtype=dtype)
    # seeded, without touching the caller's RNG: every worker that builds an entry gets the same
    # weights, so a fixed-seed experiment with random-weight models reproduces across processes
    devices = [device] if device is not None and str(device).startswith("cuda") else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return builder(scale)
    finally:
        _target.update(device=None, dtype=None)


def build_for_spec(spec, device, dtype):
    """What a registry entry with ``extra['random_init']`` builds, its modules moved to ``device``
    in ``dtype``: the one random-weight branch of every family's ``from_spec``."""
    built = build(spec.extra["random_init"], spec.extra.get("random_scale", "full"), device, dtype,
                  seed=int(spec.extra.get("random_seed", 0)))
    parts = built if isinstance(built, tuple) else (built,)
    parts[0].to(device=device, dtype=dtype)  # the model or pipeline; a processor stays as it is
    return built


def save(obj, directory) -> None:
    """Save what ``build`` returned so that ``from_pretrained(directory)`` loads it back."""
    parts = obj if isinstance(obj, tuple) else (obj,)
    for part in parts:
        part.save_pretrained(str(directory)) if hasattr(part, "save_pretrained") else part.save(str(directory))
