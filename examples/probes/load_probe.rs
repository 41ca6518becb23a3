//! Times the parts of model loading (development aid).
use std::time::Instant;
fn main() {
    let dir = std::path::Path::new("models/all-MiniLM-L6-v2");
    let t0 = Instant::now();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    println!("tokenizer: {:?}", t0.elapsed());
    let t0 = Instant::now();
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::new(dir.join("model.safetensors")) }
            .unwrap();
    println!("mmap: {:?}", t0.elapsed());
    let t0 = Instant::now();
    let mut n = 0usize;
    for (name, _) in st.tensors() {
        let v = st.get(&name).unwrap();
        n += v.data().iter().map(|b| *b as usize).sum::<usize>() & 1;
    }
    println!("touch all bytes: {:?} {n}", t0.elapsed());
    let t0 = Instant::now();
    let e = memex::embed::MiniLmEmbedder::load(dir, Default::default()).unwrap();
    println!("full load: {:?}", t0.elapsed());
    let t0 = Instant::now();
    use memex::embed::Embedder;
    e.embed_one("hello world").unwrap();
    println!("first embed: {:?}", t0.elapsed());
    drop(tok);
}
