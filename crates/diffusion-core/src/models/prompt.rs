//! Prompt enhancement (post-train framework, arXiv 2604.25427, stage 3): rewriting a terse user prompt
//! into the richer kind of prompt the model was trained on, before sampling.

/// Rewrites a user prompt before it is embedded. An LLM rewriter would implement it as well as
/// the rule-based enhancer of the synthetic world.
pub trait PromptEnhancer {
    /// Why a prompt could not be enhanced.
    type Error: std::error::Error;

    /// The enhanced prompt.
    fn enhance(&self, prompt: &str) -> Result<String, Self::Error>;
}
